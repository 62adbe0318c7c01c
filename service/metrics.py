"""The service's own Prometheus series (module level, so BentoML's /metrics shows them for every worker).

Label values are bounded: class names come from the model, reasons from a fixed set, never from input.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PREDICTIONS = Counter("imgclf_predictions_total", "Predictions served, by top-1 class.", ["model", "label"])
CONFIDENCE = Histogram(
    "imgclf_prediction_confidence", "Top-1 probability of served predictions.", ["model"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)  # fmt: skip
LOW_CONFIDENCE = Counter(
    "imgclf_low_confidence_predictions_total", "Predictions whose top-1 score is below the threshold.", ["model"]
)
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


def observe_batch(size: int, queue_seconds: float, infer_seconds: float) -> None:
    BATCH_SIZE.observe(size)
    QUEUE_SECONDS.observe(queue_seconds)
    INFERENCE_SECONDS.observe(infer_seconds)


def observe_prediction(model: str, label: str, score: float, low_threshold: float) -> None:
    PREDICTIONS.labels(model, label).inc()
    CONFIDENCE.labels(model).observe(score)
    if score < low_threshold:
        LOW_CONFIDENCE.labels(model).inc()


_served: list[tuple[str, str]] = []


def set_model_info(model: str, runtime: str, load_seconds: float) -> None:
    while _served:
        MODEL_INFO.remove(*_served.pop())
    MODEL_INFO.labels(model, runtime).set(1)
    _served.append((model, runtime))
    MODEL_LOAD_SECONDS.set(load_seconds)
