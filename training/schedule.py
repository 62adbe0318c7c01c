"""The time budget (``max_minutes``): how many epochs still fit, and what a shortened run records.

The pace is measured after warm-up: the first epoch of a run pays for allocator warm-up, kernel
selection and a machine that may still be busy, so it never decides the schedule on its own. When the
budget does cut the schedule, the run says so in its last log lines, in its report and in the stored
model's metadata (``GET /model`` shows it): a shortened model never passes silently as a full one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from .autotune import PrecisionChoice
from .config import TrainConfig

log = logging.getLogger(__name__)

STOP_REASONS = ("completed", "target", "early_stop", "time")


def epochs_that_fit(epoch: int, last: int, epoch_seconds: list[float], deadline: float) -> int:
    """The last epoch that can still finish before ``deadline`` at the pace of the epochs after the first.

    ``epoch_seconds`` holds this run's epoch times so far; with only the warm-up epoch measured the
    schedule is left alone (the hard deadline inside an epoch still holds).
    """
    if len(epoch_seconds) < 2:
        return last
    per_epoch = sum(epoch_seconds[1:]) / (len(epoch_seconds) - 1)
    end = max(epoch, min(last, epoch + int((deadline - time.monotonic()) // per_epoch)))
    if end < last:
        log.info("time budget: %d more epoch(s) fit at %.0f s an epoch; the schedule now ends at epoch %d",
                 end - epoch, per_epoch, end)  # fmt: skip
    return end


@dataclass(frozen=True)
class RunSummary:
    """How a run went: planned and run epochs, why it stopped, its precision, and a note when it was cut short."""

    epochs_planned: int
    epochs_run: int
    stopped: str  # one of STOP_REASONS
    train_seconds: float
    precision: dict
    note: str = ""

    @classmethod
    def of(cls, cfg: TrainConfig, history: list[dict], stopped: str, choice: PrecisionChoice,
           seconds: float) -> RunSummary:  # fmt: skip
        run = len(history)
        note = ""
        if stopped == "time":
            note = (f"schedule shortened from {cfg.epochs} to {run} epochs by max_minutes={cfg.max_minutes:g}; "
                    "expected accuracy is lower. Train the full schedule with --set max_minutes=null "
                    "(or a larger max_minutes)")  # fmt: skip
        return cls(cfg.epochs, run, stopped, round(seconds, 1), choice.to_dict(), note)

    def to_dict(self) -> dict:
        return asdict(self)
