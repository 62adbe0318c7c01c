"""The promotion gate (pure): may a challenger replace the champion, and why.

Both sides are measured by the same code on the same holdout; the challenger passes when its
accuracy is at least the champion's minus ``tolerance`` and no class's recall falls by more than
``max_recall_drop``. Only classes both models know are compared class by class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GatePolicy:
    tolerance: float = 0.01  # accuracy may fall by at most this much
    max_recall_drop: float = 0.05  # per class, in recall (0-1)


@dataclass
class Decision:
    promote: bool
    reason: str
    challenger: dict
    champion: dict | None
    recall_drops: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def summary(metrics: dict) -> dict:
    """What the registry keeps of a metric set: accuracy, macro F1, recall per class, sample count."""
    return {
        "accuracy": round(float(metrics["accuracy"]), 6),
        "macro_f1": round(float(metrics["macro"]["f1"]), 6),
        "num_samples": int(metrics["num_samples"]),
        "recall": {name: round(float(m["recall"]), 6) for name, m in metrics["per_class"].items() if m["support"]},
    }


def decide(challenger: dict, champion: dict | None, policy: GatePolicy) -> Decision:
    """``challenger`` and ``champion`` are :func:`summary` dicts measured on the same holdout."""
    if champion is None:
        return Decision(True, "no champion yet: the first model becomes champion", challenger, None)
    floor = champion["accuracy"] - policy.tolerance
    drops = {
        name: round(champion["recall"][name] - recall, 6)
        for name, recall in challenger["recall"].items()
        if name in champion["recall"] and champion["recall"][name] - recall > policy.max_recall_drop
    }
    acc = f"accuracy {challenger['accuracy']:.4f} vs champion {champion['accuracy']:.4f}"
    if challenger["accuracy"] < floor:
        return Decision(False, f"refused: {acc}, below the floor {floor:.4f} (tolerance {policy.tolerance})",
                        challenger, champion, drops)  # fmt: skip
    if drops:
        worst = ", ".join(f"{name} -{drop * 100:.1f} pts" for name, drop in sorted(drops.items(), key=lambda d: -d[1]))
        return Decision(False, f"refused: recall fell by more than {policy.max_recall_drop * 100:.1f} points "
                               f"for {worst} ({acc})", challenger, champion, drops)  # fmt: skip
    return Decision(True, f"promoted: {acc} (tolerance {policy.tolerance}); no class's recall fell by more than "
                          f"{policy.max_recall_drop * 100:.1f} points", challenger, champion)  # fmt: skip
