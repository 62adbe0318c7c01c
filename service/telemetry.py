"""The service's own Prometheus series (module level, so BentoML's /metrics shows them for every worker).

Label values are bounded: class names come from the model, reasons from a fixed set, never from input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from service.tally import TALLY

if TYPE_CHECKING:
    from service.inference.answers import Verdict
    from service.inference.drift import DriftStatus
    from service.retraining.records import Job, Rollout

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PREDICTIONS = Counter("imgclf_predictions_total", "Predictions served, by top-1 class.", ["model", "label"])
CONFIDENCE = Histogram(
    "imgclf_prediction_confidence", "Top-1 probability of served predictions.", ["model"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)  # fmt: skip
LOW_CONFIDENCE = Counter(
    "imgclf_low_confidence_predictions_total", "Predictions whose top-1 score is below the threshold.", ["model"]
)
ABSTAINED = Counter("imgclf_abstained_predictions_total", "Answers that abstained (top score below the threshold).",
                    ["model"])  # fmt: skip
BATCH_SIZE = Histogram(
    "imgclf_inference_batch_size", "Images per inference batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
PREPROCESS_SECONDS = Histogram("imgclf_preprocess_seconds", "Decode + transform time per image.",
                               buckets=LATENCY_BUCKETS)  # fmt: skip
INFERENCE_SECONDS = Histogram("imgclf_inference_seconds", "Runtime time per inference batch.",
                              buckets=LATENCY_BUCKETS)  # fmt: skip
QUEUE_SECONDS = Histogram("imgclf_batch_queue_seconds", "Time the oldest image of a batch waited for it.",
                          buckets=LATENCY_BUCKETS)  # fmt: skip
REJECTED = Counter("imgclf_rejected_requests_total", "Requests refused, by reason.", ["endpoint", "reason"])
IMAGES = Counter("imgclf_images_total", "Images received, by endpoint.", ["endpoint"])
MODEL_LOAD_SECONDS = Gauge("imgclf_model_load_seconds", "Seconds the served model took to load and warm up.",
                           multiprocess_mode="max")  # fmt: skip
MODEL_INFO = Gauge("imgclf_model_info", "The model version and runtime served (value 1).", ["model", "runtime"],
                   multiprocess_mode="liveall")  # fmt: skip


RELOADS = Counter("imgclf_model_reloads_total", "Champion changes picked up by this worker, by result.", ["result"])
CHAMPION_INFO = Gauge("imgclf_champion_info", "The registry's champion for the served model name (value 1).",
                      ["model", "tag"], multiprocess_mode="mostrecent")  # fmt: skip
RETRAIN_JOBS = Counter("imgclf_retrain_jobs_total", "Retraining jobs ended, by final status.", ["status"])
RETRAIN_SECONDS = Histogram("imgclf_retrain_job_duration_seconds", "Wall time of ended retraining jobs.",
                            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))  # fmt: skip
RETRAIN_TRIGGERS = Counter("imgclf_retrain_triggers_total", "Retrain jobs started by a policy, by policy.",
                           ["policy"])  # fmt: skip
CAPTURED = Counter("imgclf_captured_images_total", "Live images kept for labelling, by reason.", ["reason"])
CAPTURE_DROPPED = Counter("imgclf_capture_dropped_total", "Captures not kept: busy writer, disk quota, error.",
                          ["why"])  # fmt: skip
PROMOTIONS = Counter("imgclf_promotions_total", "Champion decisions: promoted, refused, manual, rollback.",
                     ["decision"])  # fmt: skip
CHALLENGER_ACCURACY = Gauge("imgclf_last_challenger_accuracy",
                            "Holdout primary metric (accuracy; mAP multi-label) of the last judged challenger.",
                            ["model"], multiprocess_mode="mostrecent")  # fmt: skip
FEEDBACK = Counter("imgclf_feedback_samples_total", "Feedback images collected (duplicates not counted).", ["model"])
GRPC_REQUESTS = Counter("imgclf_grpc_requests_total", "gRPC calls, by method and status code.", ["method", "code"])
GRPC_SECONDS = Histogram("imgclf_grpc_request_seconds", "gRPC call latency, by method.", ["method"],
                         buckets=LATENCY_BUCKETS)  # fmt: skip
DRIFT_SCORE = Gauge("imgclf_drift_score", "Drift statistic of the live window over its calibrated threshold "
                    "(1 is the alarm line; 0 until the window is full).", multiprocess_mode="livemax")  # fmt: skip
DRIFT_DETECTED = Gauge("imgclf_drift_detected", "1 while a worker's live window differs from the model's reference.",
                       multiprocess_mode="livemax")  # fmt: skip
DRIFT_P_VALUE = Gauge("imgclf_drift_p_value", "p-value of the live window against the reference (1 until full).",
                      multiprocess_mode="livemin")  # fmt: skip
DRIFT_CLASS_SHIFT = Gauge("imgclf_drift_class_shift", "Total variation between the live window's and the "
                          "reference's predicted-class frequencies (0..1).", multiprocess_mode="livemax")  # fmt: skip
DRIFT_CONFIDENCE = Gauge("imgclf_drift_mean_confidence", "Mean top-1 score: of the live window, and of the "
                         "validation split the reference was taken on.", ["sample"],
                         multiprocess_mode="livemin")  # fmt: skip
SHADOW_IMAGES = Counter("imgclf_rollout_shadow_images_total", "Images offered to the shadow challenger, by "
                        "result: agreed or disagreed with the champion, dropped (worker busy), failed.",
                        ["result"])  # fmt: skip
SHADOW_AGREEMENT = Gauge("imgclf_rollout_shadow_agreement", "Share of shadow-scored images on which the challenger's "
                         "answer matched the champion's, this stage (lowest worker).",
                         multiprocess_mode="livemin")  # fmt: skip
ROLLOUT_STAGE = Gauge("imgclf_rollout_stage", "The active rollout's stage: 0 none, 1 shadow, 2 canary.",
                      multiprocess_mode="livemax")  # fmt: skip
ROLLOUT_STAGE_SECONDS = Gauge("imgclf_rollout_stage_seconds", "Seconds the active rollout has been in its stage "
                              "(0: none).", multiprocess_mode="livemax")  # fmt: skip
ROLLOUT_INFO = Gauge("imgclf_rollout_info", "The challenger being rolled out and its stage (value 1).",
                     ["tag", "stage"], multiprocess_mode="mostrecent")  # fmt: skip
ROLLOUT_IMAGES = Counter("imgclf_rollout_requests_total", "Images answered or scored during a rollout, by the "
                         "version that did it (champion and challenger).", ["version"])  # fmt: skip
ROLLOUT_GUARD_VALUE = Gauge("imgclf_rollout_guard_value", "Each guard's live value as last judged (NaN: not "
                            "enough evidence yet).", ["guard"], multiprocess_mode="mostrecent")  # fmt: skip
ROLLOUT_GUARD_THRESHOLD = Gauge("imgclf_rollout_guard_threshold", "Each guard's threshold.", ["guard"],
                                multiprocess_mode="mostrecent")  # fmt: skip
ROLLOUT_ABORTS = Counter("imgclf_rollout_aborts_total", "Rollouts aborted, by reason: the failed guard, operator, "
                         "champion_changed or load_failed.", ["reason"])  # fmt: skip
ROLLOUT_PROMOTIONS = Counter("imgclf_rollout_promotions_total", "Rollouts that ended with the challenger promoted, "
                             "by who decided: guards (automatic) or operator.", ["by"])  # fmt: skip
GUARDS = ("error_rate", "latency_ratio", "low_confidence_increase", "disagreement", "feedback_accuracy")
ABORT_REASONS = (*GUARDS, "operator", "champion_changed", "load_failed")
PROCESS_CPU = Counter("imgclf_process_cpu_seconds_total", "CPU time of the worker processes (user + system).")
PROCESS_RSS = Gauge("imgclf_process_resident_memory_bytes", "Resident memory of each worker process.",
                    multiprocess_mode="liveall")  # fmt: skip


_children: dict[tuple, Counter | Gauge | Histogram] = {}


def _child(metric: Counter | Gauge | Histogram, *labels: str) -> Counter | Gauge | Histogram:
    """``metric.labels(*labels)``, looked up once (label values are bounded, see above)."""
    key = (metric, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


# Per image and per batch: summed by the tally, written a few times a second (see service.tally).


def observe_batch(size: int, queue_seconds: float, infer_seconds: float) -> None:
    TALLY.observe(BATCH_SIZE, size)
    TALLY.observe(QUEUE_SECONDS, queue_seconds)
    TALLY.observe(INFERENCE_SECONDS, infer_seconds)


def observe_images(endpoint: str, count: int) -> None:
    TALLY.add(_child(IMAGES, endpoint), count)


def observe_preprocess(seconds: float) -> None:
    TALLY.observe(PREPROCESS_SECONDS, seconds)


def observe_verdict(model: str, classes: list[str], verdict: Verdict, low_threshold: float) -> None:
    """One answered image: its predicted class (multi-label: each predicted label) and its top score."""
    for i in verdict.predicted:
        TALLY.add(_child(PREDICTIONS, model, classes[i]))
    TALLY.observe(_child(CONFIDENCE, model), verdict.confidence)
    if verdict.confidence < low_threshold:
        TALLY.add(_child(LOW_CONFIDENCE, model))
    if verdict.abstained:
        TALLY.add(_child(ABSTAINED, model))


_current: dict[Gauge, tuple[str, ...]] = {}


def _mark_current(gauge: Gauge, *labels: str) -> None:
    """Exactly one of ``gauge``'s label sets at 1; the previous one drops to 0 (multiprocess files cannot
    forget a series, so removing it would leave its last value behind)."""
    previous = _current.get(gauge)
    if previous == labels:
        return
    if previous is not None:
        gauge.labels(*previous).set(0)
    gauge.labels(*labels).set(1)
    _current[gauge] = labels


def set_model_info(model: str, runtime: str, load_seconds: float) -> None:
    """Mark what this worker serves."""
    _mark_current(MODEL_INFO, model, runtime)
    ROLLOUT_IMAGES.labels(model)  # the served version's rollout traffic exists (at 0) from its first answer on
    MODEL_LOAD_SECONDS.set(load_seconds)


def set_champion(model: str, tag: str) -> None:
    _mark_current(CHAMPION_INFO, model, tag)


def observe_job(job: Job) -> None:
    """Count one ended job (each is handed to exactly one worker by the registry)."""
    import datetime as dt

    RETRAIN_JOBS.labels(job.status).inc()
    if job.started_at and job.finished_at:
        seconds = dt.datetime.fromisoformat(job.finished_at) - dt.datetime.fromisoformat(job.started_at)
        RETRAIN_SECONDS.observe(seconds.total_seconds())
    if job.decision is not None:
        decision = job.decision
        PROMOTIONS.labels("promoted" if decision.promoted else "passed" if decision.promote else "refused").inc()
        if decision.challenger_score is not None:
            CHALLENGER_ACCURACY.labels(job.model_name).set(decision.challenger_score)


def init_rollout_series(thresholds: dict[str, float]) -> None:
    """Every rollout series from start-up, at zero, the guards' thresholds those of the default plan (so a
    dashboard and an alert see them before any rollout)."""
    for name, value in thresholds.items():
        ROLLOUT_GUARD_THRESHOLD.labels(name).set(value)
    for reason in ABORT_REASONS:
        ROLLOUT_ABORTS.labels(reason)
    for by in ("guards", "operator"):
        ROLLOUT_PROMOTIONS.labels(by)
    for result in ("agreed", "disagreed", "dropped", "failed"):
        SHADOW_IMAGES.labels(result)
    set_rollout(None)


def set_rollout(rollout: Rollout | None) -> None:
    """The active rollout as this worker last read it from the registry (None: no rollout)."""
    import datetime as dt
    import math

    stage = rollout.stage if rollout else None
    ROLLOUT_STAGE.set({"shadow": 1, "canary": 2}.get(stage or "", 0))
    since = dt.datetime.fromisoformat(rollout.stage_started_at) if rollout else None
    ROLLOUT_STAGE_SECONDS.set((dt.datetime.now(dt.UTC) - since).total_seconds() if since else 0)
    judged = {g.guard: g for g in rollout.guards} if rollout else {}
    for name in GUARDS:
        g = judged.get(name)
        ROLLOUT_GUARD_VALUE.labels(name).set(g.value if g and g.value is not None else math.nan)
        if g is not None:
            ROLLOUT_GUARD_THRESHOLD.labels(name).set(g.threshold)
    if rollout is None:
        previous = _current.pop(ROLLOUT_INFO, None)
        if previous is not None:
            ROLLOUT_INFO.labels(*previous).set(0)
        return
    _mark_current(ROLLOUT_INFO, rollout.tag, stage or "")


def set_drift(status: DriftStatus | None) -> None:
    """This worker's drift status (None: no monitor, e.g. a model stored before drift references)."""
    DRIFT_SCORE.set(status.score if status else 0)
    DRIFT_DETECTED.set(int(status.detected) if status else 0)
    DRIFT_P_VALUE.set(status.p_value if status else 1)
    DRIFT_CLASS_SHIFT.set(status.class_shift if status else 0)
    DRIFT_CONFIDENCE.labels("live").set(status.mean_confidence if status else 0)
    DRIFT_CONFIDENCE.labels("reference").set(status.reference_confidence if status else 0)


_cpu_seen = [0.0]


def observe_process() -> None:
    """This worker's CPU seconds and resident memory (BentoML's multiprocess /metrics has no process series)."""
    import os
    import time

    cpu = time.process_time()
    PROCESS_CPU.inc(max(0.0, cpu - _cpu_seen[0]))
    _cpu_seen[0] = cpu
    try:
        with open("/proc/self/statm") as fh:
            PROCESS_RSS.set(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        pass
