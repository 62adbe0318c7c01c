"""Early stopping as a small state machine: feed it one metric value per epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EarlyStopping:
    """Tracks the best value of a metric and says when ``patience`` epochs brought no improvement.

    An epoch improves when it beats the best by more than ``min_delta`` (in the metric's direction).
    ``target``, when set, is a criterion: once the best value reaches it, there is no need to go on.
    """

    patience: int = 5
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "max"
    target: float | None = None
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; return True when this epoch is the new best."""
        self.history.append(value)
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    @property
    def reached_target(self) -> bool:
        if self.target is None or self.best is None:
            return False
        return self.best >= self.target if self.mode == "max" else self.best <= self.target

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best", "best_epoch", "bad_epochs", "history")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
