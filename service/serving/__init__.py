"""What one worker does to serve: follow the model to serve (``follower``), take every protocol's images
down one path (``classify``), and run the periodic tasks (``periodic``). :func:`build_worker` wires them."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from service import telemetry
from service.inference import MicroBatcher, build_classifier
from service.inference.measured import server_key
from service.retraining.capture import Capturer
from service.retraining.records import Guards
from service.retraining.registry import Registry
from service.retraining.rollout import thresholds
from service.serving.classify import Admission, Arrivals, ClassifyPath, ImageResult
from service.serving.follower import ModelFollower, Served, resolve_tag
from service.serving.periodic import Periodic
from service.serving.rollout import RolloutFollower
from service.settings import Settings
from training.store import load_model

__all__ = ["ClassifyPath", "ImageResult", "ModelFollower", "Periodic", "Worker", "build_worker", "resolve_tag"]


@dataclass
class Worker:
    follower: ModelFollower
    path: ClassifyPath
    periodic: Periodic
    capturer: Capturer | None = None
    rollout: RolloutFollower | None = None

    async def close(self) -> None:
        self.periodic.stop()
        await self.follower.close()
        if self.rollout is not None:
            await self.rollout.close()
        self.path.close()
        if self.capturer is not None:
            self.capturer.close()


def _warm(served: Served) -> Served:
    """A full batch and a single image through the batcher's own thread (see ``MicroBatcher.warm_up``)."""
    x = np.zeros((served.batcher.max_batch_size, *served.classifier.input_shape), np.float32)
    served.batcher.warm_up(x)
    served.batcher.warm_up(x[:1])
    return served


def build_worker(settings: Settings, registry: Registry | None = None) -> Worker:
    """The serving parts of one worker, wired (nothing loaded yet: call ``follower.load()``)."""
    arrivals = Arrivals()
    options = settings.inference()
    if options.workers > 1:  # the server's workers measure once, one at a time (service.inference.measured)
        options = replace(options, measured_by=server_key())

    def build(tag: str) -> Served:
        started = time.perf_counter()
        clf = build_classifier(load_model(tag), options, started=started)
        batcher = MicroBatcher(clf.infer, clf.batch_limit, settings.max_latency_ms,
                               on_batch=telemetry.observe_batch, infer_alone=clf.lone and clf.infer_alone)  # fmt: skip
        batcher.also_coming = lambda: arrivals.count
        return _warm(Served(clf, batcher))

    def build_challenger(tag: str, nice: int) -> Served:
        """A rollout's challenger: no drift monitor, its batches not in the metrics, its batcher's thread at
        ``nice`` (a shadow's: low priority). The champion's thread count (torch's is per process: a different one
        would change the champion's too)."""
        clf = build_classifier(load_model(tag), replace(options, drift_sample=0.0, lone_threads=None))
        return _warm(Served(clf, MicroBatcher(clf.infer, clf.batch_limit, settings.max_latency_ms, nice=nice)))

    follower = ModelFollower(settings.model_name, settings.model_tag, registry, build)
    admission = Admission(settings.max_batch_images, settings.max_upload_bytes)
    path = ClassifyPath(settings.model_name, lambda: follower.served, admission, arrivals, settings.default_top_k,
                        settings.low_confidence, settings.abstain_below,
                        decode_threads=settings.capacity().decode_threads)  # fmt: skip
    telemetry.set_drift(None)  # the drift series exist from start-up
    capturer = None
    if settings.capture and registry is not None:
        capturer = Capturer(registry, settings.capture_dir, settings.model_name, settings.capture,
                            settings.capture_sample, settings.capture_max_bytes, settings.low_confidence,
                            settings.near_tie_margin, drifting=lambda: path.drift_detected)  # fmt: skip
        path.capture = capturer.offer

    def check_drift() -> None:
        monitor = path.classifier.drift if path.classifier else None
        telemetry.set_drift(monitor.check() if monitor else None)

    tasks = [follower.poll, check_drift]
    if capturer is not None:
        tasks.append(lambda: capturer.expire(settings.capture_retention_hours))
    rollout = None
    telemetry.init_rollout_series(thresholds(settings.rollout.guards or Guards()))
    if registry is not None and not settings.model_tag:
        disagreement = (lambda d, s, t, c: capturer.offer(d, s, t, c, disagreement=True)) if capturer else None
        rollout = RolloutFollower(settings.model_name, registry, build_challenger, settings.low_confidence,
                                  disagreement)  # fmt: skip
        path.rollout = rollout
        tasks.append(rollout.poll)
    return Worker(follower, path, Periodic(settings.registry_poll_seconds, tasks), capturer, rollout)
