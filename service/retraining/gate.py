"""The promotion gate (pure): may a challenger replace the champion, and why.

Both sides are measured by the same code on the same holdout; the challenger passes when its
primary metric (accuracy; mAP for multi-label models) is not worse than the champion's by more than
``tolerance`` and no class's recall (multi-label: no label's average precision) falls by more than
``max_recall_drop``. With a paired comparison (:mod:`service.retraining.stats`, what a job gives) the decision
says which of three it is: not worse by more than the tolerance with confidence (the interval's lower end
within it: passes), worse with confidence (the whole interval below zero, reaching past the tolerance:
refused), or a difference within the noise (the interval spans zero: judged on the point estimate, never
called a regression); without one, on the point estimates. Only classes both models know are compared class
by class; a challenger of another task than the champion's is never promoted automatically.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.retraining.records import Decision, PairedComparison


@dataclass(frozen=True)
class GatePolicy:
    tolerance: float = 0.01  # accuracy may fall by at most this much
    max_recall_drop: float = 0.05  # per class, in recall (0-1)


def summary(metrics: dict) -> dict:
    """What the registry keeps of a metric set: the primary metric and its per-class breakdown.

    Multi-class (and hierarchical): accuracy, macro F1, recall per class (and accuracy per level).
    Multi-label: mAP, micro and macro F1, subset accuracy, average precision per label.
    """
    r = _round
    if "map" in metrics:
        return {"task": "multilabel", "primary": "map", "per_label": "ap", "map": r(metrics["map"]),
                "micro_f1": r(metrics["micro"]["f1"]), "macro_f1": r(metrics["macro"]["f1"]),
                "subset_accuracy": r(metrics["subset_accuracy"]), "num_samples": int(metrics["num_samples"]),
                "ap": {n: r(m["ap"]) for n, m in metrics["per_label"].items() if m["ap"] is not None}}  # fmt: skip
    out = {"task": "hierarchical" if "hierarchy" in metrics else "multiclass", "primary": "accuracy",
           "per_label": "recall", "accuracy": r(metrics["accuracy"]), "macro_f1": r(metrics["macro"]["f1"]),
           "num_samples": int(metrics["num_samples"]),
           "recall": {name: r(m["recall"]) for name, m in metrics["per_class"].items() if m["support"]}}  # fmt: skip
    if "hierarchy" in metrics:
        out["levels"] = {d: r(v["accuracy"]) for d, v in metrics["hierarchy"]["levels"].items()}
    return out


def _round(value: float) -> float:
    return round(float(value), 6)


def decide(challenger: dict, champion: dict | None, policy: GatePolicy, paired: PairedComparison | None = None,
           evaluation: PairedComparison | None = None) -> Decision:  # fmt: skip
    """``challenger`` and ``champion`` are :func:`summary` dicts measured on the same holdout; ``evaluation`` the
    paired comparison on the rolling evaluation set, which refuses too when it finds the challenger worse with
    confidence."""
    decision = _decide(challenger, champion, policy, paired)
    if evaluation is None:
        return decision
    decision.evaluation = evaluation
    if decision.promote and evaluation.ci_high < 0:
        decision.promote = False
        decision.reason = (f"refused: on the rolling evaluation set the challenger is worse with confidence "
                           f"({evaluation.describe()}), though the holdout said: {decision.reason}")  # fmt: skip
    else:
        decision.reason += f"; on the rolling evaluation set: {evaluation.describe()}"
    return decision


def _decide(challenger: dict, champion: dict | None, policy: GatePolicy,
            paired: PairedComparison | None = None) -> Decision:  # fmt: skip
    if champion is None:
        return Decision(promote=True, reason="no champion yet: the first model becomes champion", challenger=challenger)
    task, champion_task = challenger.get("task", "multiclass"), champion.get("task", "multiclass")
    if (task == "multilabel") != (champion_task == "multilabel"):
        return Decision(
            promote=False,
            reason=f"refused: the challenger is {task} but the champion is {champion_task}; "
            "promote it by hand if that change is intended",
            challenger=challenger,
            champion=champion,
        )
    metric, per = challenger.get("primary", "accuracy"), challenger.get("per_label", "recall")
    floor = champion[metric] - policy.tolerance
    drops = {
        name: round(champion[per][name] - value, 6)
        for name, value in challenger[per].items()
        if name in champion[per] and champion[per][name] - value > policy.max_recall_drop
    }
    label = "mAP" if metric == "map" else metric
    acc = f"{label} {challenger[metric]:.4f} vs champion {champion[metric]:.4f}"
    refused = dict(promote=False, challenger=challenger, champion=champion, recall_drops=drops, paired=paired)
    if paired is not None and paired.ci_low >= -policy.tolerance:  # not worse than the tolerance, with confidence
        acc = (
            f"{acc}: not worse by more than the tolerance with {paired.confidence:.0%} confidence ({paired.describe()})"
        )
    elif paired is not None and paired.ci_high < 0:
        reason = (
            f"refused: the challenger is worse than the champion with confidence ({acc}; {paired.describe()}; "
            f"tolerance {policy.tolerance})"
        )
        return Decision(reason=reason, **refused)
    elif challenger[metric] < floor:
        noise = f"; {paired.describe()}, inconclusive" if paired is not None else ""
        reason = f"refused: {acc}, below the floor {floor:.4f} (tolerance {policy.tolerance}){noise}"
        return Decision(reason=reason, **refused)
    elif paired is not None:
        acc = f"{acc}: the difference is within the noise ({paired.describe()})"
    what = "average precision" if per == "ap" else "recall"
    if drops:
        worst = ", ".join(f"{name} -{drop * 100:.1f} pts" for name, drop in sorted(drops.items(), key=lambda d: -d[1]))
        return Decision(reason=f"refused: {what} fell by more than {policy.max_recall_drop * 100:.1f} points for "
                        f"{worst} ({acc})", **refused)  # fmt: skip
    kind = "label's" if per == "ap" else "class's"
    return Decision(
        promote=True,
        reason=f"promoted: {acc} (tolerance {policy.tolerance}); no {kind} {what} fell by "
        f"more than {policy.max_recall_drop * 100:.1f} points",
        challenger=challenger,
        champion=champion,
        paired=paired,
    )
