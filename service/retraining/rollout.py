"""The live rollout's judgement (pure): what each worker counted, the guards on it, and the next step.

Every worker counts, per rollout and stage, what each side did (:class:`Tally`: images, failures, answers below
the low-confidence line, a latency histogram; in shadow also the comparisons) and writes its running totals to
the registry; the worker holding the rollout lease merges them and calls :func:`judge`, which says whether to
wait, move to the next stage, promote, or abort, with every guard's value and threshold.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Literal

from service.retraining.records import Guards, GuardValue, Rollout

# Latency histogram: bucket i holds times up to EDGES_MS[i] (the last: everything slower).
EDGES_MS = tuple(round(0.25 * 1.25**i, 4) for i in range(52))  # 0.25 ms .. ~28 s
Role = Literal["champion", "challenger"]


@dataclass
class Side:
    """One side's counts in one stage on one worker (or merged over workers)."""

    images: int = 0
    errors: int = 0
    low_confidence: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(EDGES_MS) + 1))

    def answered(self, seconds: float | None, low: bool) -> None:
        """One answer; ``seconds`` None: counted but not timed."""
        self.images += 1
        self.low_confidence += low
        if seconds is not None:
            self.latency[_bucket(seconds * 1000)] += 1

    def failed(self) -> None:
        self.images += 1
        self.errors += 1

    def merge(self, other: Side) -> None:
        self.images += other.images
        self.errors += other.errors
        self.low_confidence += other.low_confidence
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    @property
    def answers(self) -> int:
        return self.images - self.errors

    def quantile_ms(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``q`` quantile (None with no answers)."""
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for i, n in enumerate(self.latency):
            seen += n
            if seen >= q * total:
                return EDGES_MS[min(i, len(EDGES_MS) - 1)]
        return EDGES_MS[-1]

    def to_json(self) -> dict:
        return {"images": self.images, "errors": self.errors, "low_confidence": self.low_confidence,
                "latency": list(self.latency)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> Side:
        latency = list(data.get("latency") or [])
        latency = (latency + [0] * (len(EDGES_MS) + 1))[: len(EDGES_MS) + 1]
        return cls(int(data.get("images", 0)), int(data.get("errors", 0)), int(data.get("low_confidence", 0)), latency)


def _bucket(ms: float) -> int:
    if ms <= EDGES_MS[0]:
        return 0
    return min(len(EDGES_MS), math.ceil(math.log(ms / EDGES_MS[0], 1.25) - 1e-9))


@dataclass
class Tally:
    """Both sides' counts in one stage, and (shadow) how often the challenger agreed and what was dropped."""

    champion: Side = field(default_factory=Side)
    challenger: Side = field(default_factory=Side)
    compared: int = 0
    disagreed: int = 0
    dropped: int = 0

    def side(self, role: Role) -> Side:
        return self.champion if role == "champion" else self.challenger

    def merge(self, other: Tally) -> Tally:
        self.champion.merge(other.champion)
        self.challenger.merge(other.challenger)
        self.compared += other.compared
        self.disagreed += other.disagreed
        self.dropped += other.dropped
        return self

    def to_json(self) -> dict:
        return {"champion": self.champion.to_json(), "challenger": self.challenger.to_json(),
                "compared": self.compared, "disagreed": self.disagreed, "dropped": self.dropped}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        sides = Side.from_json(data.get("champion") or {}), Side.from_json(data.get("challenger") or {})
        return cls(*sides, int(data.get("compared", 0)), int(data.get("disagreed", 0)), int(data.get("dropped", 0)))

    @classmethod
    def merged(cls, tallies: list[dict]) -> Tally:
        out = cls()
        for data in tallies:
            out.merge(cls.from_json(data))
        return out

    def summary(self) -> dict:
        """What an operator reads: per side images, error and low-confidence shares, p50/p99 in ms."""

        def side(s: Side) -> dict:
            return {"images": s.images, "errors": s.errors, "error_rate": _share(s.errors, s.images),
                    "low_confidence_share": _share(s.low_confidence, s.answers),
                    "p50_ms": s.quantile_ms(0.5), "p99_ms": s.quantile_ms(0.99)}  # fmt: skip

        agreement = _share(self.compared - self.disagreed, self.compared)
        return {"champion": side(self.champion), "challenger": side(self.challenger), "compared": self.compared,
                "agreement": agreement, "dropped": self.dropped}  # fmt: skip


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


@dataclass(frozen=True)
class FeedbackScore:
    """Feedback labels received for images one side answered during the rollout, and how many it got right."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


# ---------------------------------------------------------------- guards
def _guard(name: str, value: float | None, threshold: float, holds: bool, enough: bool, evidence: str,
           needs: str) -> GuardValue:  # fmt: skip
    """A guard judged only with ``enough`` evidence (``needs`` says how much, in words, until then)."""
    judged = enough and value is not None
    return GuardValue(guard=name, value=None if value is None else round(value, 6), threshold=threshold,
                      ok=holds if judged else None, evidence=evidence if judged else f"{evidence} (judged from "
                      f"{needs})")  # fmt: skip


def thresholds(guards: Guards) -> dict[str, float]:
    """Each guard's threshold as :func:`guard_values` reports it."""
    return {"error_rate": guards.max_error_rate, "latency_ratio": guards.max_latency_ratio,
            "low_confidence_increase": guards.max_low_confidence_increase, "disagreement": guards.max_disagreement,
            "feedback_accuracy": -guards.feedback_tolerance}  # fmt: skip


def _unjudged(name: str, threshold: float, why: str) -> GuardValue:
    return GuardValue(guard=name, threshold=threshold, evidence=why)


def guard_values(stage: str, guards: Guards, tally: Tally,
                 feedback: dict[str, FeedbackScore] | None = None) -> list[GuardValue]:  # fmt: skip
    """Every guard as judged on ``tally`` (one stage, all workers) and the feedback so far."""
    ours, theirs, need = tally.challenger, tally.champion, guards.min_requests
    both = ours.answers >= need and theirs.answers >= need
    out = []

    rate = _share(ours.errors, ours.images)
    out.append(_guard("error_rate", rate, guards.max_error_rate, rate is not None and rate <= guards.max_error_rate,
                      ours.images >= need, f"{ours.errors} of {ours.images} challenger images failed",
                      f"{need} images"))  # fmt: skip

    if stage == "canary":
        p_ours, p_theirs = ours.quantile_ms(0.99), theirs.quantile_ms(0.99)
        ratio = p_ours / p_theirs if p_ours and p_theirs else None
        timed = min(sum(ours.latency), sum(theirs.latency)) >= need
        out.append(_guard("latency_ratio", ratio, guards.max_latency_ratio,
                          ratio is not None and ratio <= guards.max_latency_ratio, timed,
                          f"p99 model latency {_ms(p_ours)} challenger vs {_ms(p_theirs)} champion",
                          f"{need} answers each"))  # fmt: skip
    else:
        why = "judged in canary: a shadow runs at low priority, so its latency is not the model's"
        out.append(_unjudged("latency_ratio", guards.max_latency_ratio, why))

    low_ours, low_theirs = _share(ours.low_confidence, ours.answers), _share(theirs.low_confidence, theirs.answers)
    rise = low_ours - low_theirs if low_ours is not None and low_theirs is not None else None
    out.append(_guard("low_confidence_increase", rise, guards.max_low_confidence_increase,
                      rise is not None and rise <= guards.max_low_confidence_increase, both,
                      f"low-confidence share {_pct(low_ours)} challenger vs {_pct(low_theirs)} champion",
                      f"{need} answers each"))  # fmt: skip

    if stage == "shadow":
        share = _share(tally.disagreed, tally.compared)
        out.append(_guard("disagreement", share, guards.max_disagreement,
                          share is not None and share <= guards.max_disagreement, tally.compared >= need,
                          f"{tally.disagreed} of {tally.compared} compared images answered otherwise",
                          f"{need} comparisons"))  # fmt: skip
    else:
        out.append(_unjudged("disagreement", guards.max_disagreement, "judged in shadow, where both see the same "
                             "images"))  # fmt: skip

    fb = feedback or {}
    mine, other = fb.get("challenger", FeedbackScore()), fb.get("champion", FeedbackScore())
    diff = mine.accuracy - other.accuracy if mine.accuracy is not None and other.accuracy is not None else None
    out.append(_guard("feedback_accuracy", diff, -guards.feedback_tolerance,
                      diff is not None and diff >= -guards.feedback_tolerance,
                      min(mine.labelled, other.labelled) >= guards.min_feedback,
                      f"accuracy on feedback labels {_pct(mine.accuracy)} challenger ({mine.labelled} labels) vs "
                      f"{_pct(other.accuracy)} champion ({other.labelled})",
                      f"{guards.min_feedback} labels each"))  # fmt: skip
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


# ---------------------------------------------------------------- the next step
Action = Literal["wait", "advance", "promote", "abort"]


@dataclass(frozen=True)
class Step:
    action: Action
    reason: str
    guards: list[GuardValue]
    failed: str | None = None  # the guard that aborted
    to_stage: str | None = None


# Which guards must have been judged (and held) before a stage may end.
REQUIRED = {"shadow": ("error_rate", "low_confidence_increase", "disagreement"),
            "canary": ("error_rate", "low_confidence_increase", "latency_ratio")}  # fmt: skip


def judge(rollout: Rollout, tally: Tally, feedback: dict[str, FeedbackScore] | None, now: dt.datetime) -> Step:
    """The next step of an active ``rollout`` in its current stage, given every worker's ``tally`` of it."""
    stage = rollout.stage
    assert stage is not None and rollout.status == "active"
    plan = rollout.plan
    guards = plan.guards
    values = guard_values(stage, guards or Guards(), tally, feedback)
    if guards is not None:
        for g in values:
            if g.ok is False:
                return Step("abort", f"aborted in {stage}: the {g.guard.replace('_', ' ')} guard failed "
                            f"({g.evidence}; {g.value} past {g.threshold})", values, failed=g.guard)  # fmt: skip
    stage_plan = getattr(plan, stage)
    seen = tally.compared if stage == "shadow" else tally.challenger.images
    elapsed = (now - dt.datetime.fromisoformat(rollout.stage_started_at)).total_seconds() / 60
    waiting = []
    if seen < stage_plan.min_requests:
        waiting.append(f"{seen} of {stage_plan.min_requests} {'comparisons' if stage == 'shadow' else 'answers'}")
    if elapsed < stage_plan.min_minutes:
        waiting.append(f"{elapsed:.1f} of {stage_plan.min_minutes:g} minutes")
    if guards is not None:
        unjudged = [g.guard for g in values if g.guard in REQUIRED[stage] and g.ok is None]
        if unjudged:
            waiting.append(f"guards not yet judged: {', '.join(unjudged)}")
    if waiting:
        return Step("wait", f"in {stage}: " + "; ".join(waiting), values)
    held = "every guard held" if guards is not None else "observing only (no guards)"
    counted = "comparisons" if stage == "shadow" else "challenger answers"
    done = f"{stage} complete ({seen} {counted}, {elapsed:.1f} min; {held})"
    position = plan.stages.index(stage) if stage in plan.stages else len(plan.stages)
    later = plan.stages[position + 1 :]
    if later:
        return Step("advance", f"{done}; moving to {later[0]}", values, to_stage=later[0])
    if plan.promote:
        return Step("promote", f"{done}; promoted to champion", values)
    return Step("wait", f"{done}; waiting for an operator to promote or abort (the plan does not promote by itself)",
                values)  # fmt: skip
