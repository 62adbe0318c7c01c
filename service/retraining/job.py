"""The job process: ``python -m service.retraining.job JOB_ID`` (started by the local backend, or as the
container command of a Kubernetes Job).

It runs the one ``train(config)`` of the training package, then evaluates the challenger and the champion the
job was built against with the same code on the holdout the job recorded, records the gate's decision, and
promotes when it passes, the request asked for it and that champion still serves. Workers watching the
registry pick the new champion up.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import Conflict
from service.retraining import gate, stats
from service.retraining.conductor import Conductor
from service.retraining.evaluation import evaluation_set
from service.retraining.records import Decision, Job, PairedComparison, RetrainRequest
from service.retraining.registry import Registry
from service.settings import Settings
from training import store
from training.config import TrainConfig
from training.data import DatasetError, read_record
from training.evaluate import RecordPredictions, predictions_on_record

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


# ---------------------------------------------------------------- the gate
def judge(registry: Registry, settings: Settings, job: Job, challenger: str) -> Decision:
    """Evaluate ``challenger`` against the champion ``job`` was built against, on the holdout ``job`` kept out
    of its training (the first model of a name: on its own test split); record the decision, maybe promote."""
    champion = job.champion_tag
    holdout = read_record(Path(job.holdout)) if job.holdout else store.read_split(challenger)
    if holdout is None or not holdout.get("test"):
        raise RuntimeError(f"no holdout to judge {challenger} on: neither model recorded a test split")
    policy = gate.GatePolicy(settings.gate_tolerance, settings.gate_max_recall_drop)
    ours = predictions_on_record(challenger, holdout)
    theirs = predictions_on_record(champion, holdout) if champion else None
    challenger_m = gate.summary(ours.metrics)
    champion_m = gate.summary(theirs.metrics) if theirs else None
    paired = compare(ours, theirs, challenger_m.get("task")) if theirs else None
    evaluation, described = judge_on_evaluation_set(registry, settings, job.model_name, challenger, champion)
    decision = gate.decide(challenger_m, champion_m, policy, paired, evaluation).model_copy(update={
        "holdout": f"{champion or challenger} test split ({len(holdout['test'])} images)" + described,
        "champion_tag": champion, "challenger_tag": challenger})  # fmt: skip
    recorded = dict(challenger=challenger_m, champion=champion_m, job_id=job.id)
    plan = RetrainRequest.model_validate(job.request).rollout or settings.rollout
    if decision.promote and job.request.get("auto_promote", True) and champion and not plan.direct:
        try:
            rollout = Conductor(job.model_name, registry, plan).start(challenger, decision.reason, job_id=job.id)
            decision.rollout_id = rollout.id
            decision.reason += f"; rolling out: {' -> '.join([*plan.stages, 'champion'])} (rollout {rollout.id})"
        except Conflict as exc:
            decision.reason += f"; not rolled out: {exc}"
            registry.refuse(job.model_name, challenger, decision.reason, **recorded)
    elif decision.promote and job.request.get("auto_promote", True):
        try:
            registry.promote(job.model_name, challenger, decision.reason, replacing=champion, **recorded)
            decision.promoted = True
        except Conflict as exc:  # the champion changed while the job trained: it was judged against another
            decision.reason += f"; not promoted: {exc}"
            registry.refuse(job.model_name, challenger, decision.reason, **recorded)
    elif decision.promote:
        decision.reason += "; auto_promote is off: promote it with POST /models/promote"
    else:
        registry.refuse(job.model_name, challenger, decision.reason, **recorded)
    log.info("gate: %s", decision.reason)
    return decision


def judge_on_evaluation_set(registry: Registry, settings: Settings, model_name: str, challenger: str,
                            champion: str | None) -> tuple[PairedComparison | None, str]:  # fmt: skip
    """Both models on the rolling evaluation set (feedback kept out of training): the paired comparison, and
    the set in words for the decision ('' when there is none to judge on)."""
    if champion is None or not settings.evaluation_share:
        return None, ""
    found = evaluation_set(registry, model_name, settings.evaluation_share, settings.evaluation_max_images)
    if not found.images:
        return None, ""
    try:
        ours, theirs = (predictions_on_record(tag, found.record) for tag in (challenger, champion))
    except DatasetError as exc:  # no image of a class the models know
        log.info("rolling evaluation set not used: %s", exc)
        return None, ""
    return compare(ours, theirs, None), f" + {found.describe()}"  # feedback is single-label


def compare(ours: RecordPredictions, theirs: RecordPredictions, task: str | None) -> PairedComparison | None:
    """The paired comparison on the images (and, multi-label, the labels) both models were judged on."""
    where = {key: i for i, key in enumerate(theirs.keys)}
    common = [(i, where[key]) for i, key in enumerate(ours.keys) if key in where]
    if not common:
        return None
    a, b = (np.array(ix) for ix in zip(*common, strict=True))
    if task == "multilabel":
        labels = [c for c in ours.classes if c in theirs.classes]
        ca, cb = [ours.classes.index(c) for c in labels], [theirs.classes.index(c) for c in labels]
        return stats.compare_map(ours.scores[a][:, ca], theirs.scores[b][:, cb], ours.targets[a][:, ca])
    right = ours.scores[a].argmax(1) == ours.targets[a]
    right_theirs = theirs.scores[b].argmax(1) == theirs.targets[b]
    return stats.compare_accuracy(right, right_theirs)


# ---------------------------------------------------------------- the label audit
def audit_labels(cfg: TrainConfig, champion: str, exclude: bool, write: bool = True) -> tuple[TrainConfig, Any, dict]:
    """Audit the job's training labels with the champion's probabilities (it never trained on the new images);
    the suspects go to the run's report (``audit.json``, ``audit.png``; unless ``write`` is off) and, with
    ``exclude``, out of training. Returns the config (recording what was excluded), the data as read (training
    goes on with it rather than reading it again) and the summary. Deterministic: every rank of a distributed
    job finds the same suspects."""
    from training import audit
    from training.data import load_splits
    from training.data.assemble import exclude as exclude_keys
    from training.store import load_model

    splits = load_splits(cfg.data)
    result = audit.audit_split(load_model(champion), splits)
    suspects = result.suspects
    summary = audit.write(result, cfg.run_dir / "report", excluded=exclude) if write else audit.summary(result, exclude)
    log.info("data audit: %d of %d training images look mislabelled%s; %d near-duplicates of validation or test "
             "images, %d outliers", len(suspects), len(result.samples),
             " (excluded from training)" if exclude else " (reported only)", len(result.duplicates),
             len(result.outliers))  # fmt: skip
    if exclude and suspects:
        keys = [s.key for s in suspects]
        exclude_keys(splits, keys)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"exclude": keys})})
    return cfg, splits, summary


# ---------------------------------------------------------------- the job process
def job_train_config(job: Job, settings: Settings) -> TrainConfig:
    output_dir = str(settings.jobs_dir / job.id)
    return TrainConfig.model_validate(job.config).model_copy(update={"output_dir": output_dir})


def run_helper_rank(job_id: str, registry: Registry, settings: Settings) -> str:
    """A torchrun rank other than 0: train alongside rank 0, which alone records progress and decides."""
    from training import train

    job = registry.job(job_id)
    cfg = job_train_config(job, settings)
    splits = None
    if job.champion_tag and settings.label_audit == "exclude":  # the same training images as rank 0
        cfg, splits, _ = audit_labels(cfg, job.champion_tag, exclude=True, write=False)
    train(cfg, splits=splits)
    return "succeeded"


def run_job(job_id: str, registry: Registry, settings: Settings) -> str:
    """Run one queued job to its end; returns the final status. Never raises for a training failure."""
    from training import train  # heavy: only in the job process

    if not registry.start_job(job_id, pid=os.getpid(), host=socket.gethostname()):
        log.warning("job %s is no longer queued; nothing to do", job_id)
        return registry.job(job_id).status
    job = registry.job(job_id)
    cfg = job_train_config(job, settings)
    progress: dict[str, Any] = {}
    splits = None  # read by the label audit, then trained on as they are

    def on_signal(signum: int, _frame: Any) -> None:
        raise JobCancelled(f"stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    history: list[dict] = []

    def on_epoch_end(record: dict[str, Any]) -> None:
        history.append({k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
        progress.update(epoch=record["epoch"], epochs=cfg.epochs, history=history)
        if registry.heartbeat(job_id, progress):
            raise JobCancelled("cancel requested")

    try:
        if job.champion_tag and settings.label_audit != "off":
            try:
                cfg, splits, progress["audit"] = audit_labels(cfg, job.champion_tag,
                                                              settings.label_audit == "exclude")  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - an audit that fails must not cost the retrain
                log.warning("label audit failed; training without it: %s", exc)
                progress["audit"] = {"error": f"{type(exc).__name__}: {exc}"}
            registry.heartbeat(job_id, progress)
        result = train(cfg, on_epoch_end=on_epoch_end, splits=splits)
        decision = judge(registry, settings, job, result.tag)
        registry.finish_job(job_id, "succeeded", result_tag=result.tag, decision=decision)
        return "succeeded"
    except JobCancelled as exc:
        log.warning("job %s cancelled: %s", job_id, exc)
        registry.finish_job(job_id, "cancelled", error=str(exc))
        return "cancelled"
    except Exception as exc:  # noqa: BLE001 - any failure ends the job with its reason, the champion untouched
        traceback.print_exc()
        registry.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m service.retraining.job JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)  # fmt: skip
    from service.settings import get_settings

    settings = get_settings()
    if settings.retrain_nice:
        os.nice(settings.retrain_nice)
    import torch

    torch.set_num_threads(settings.retrain_threads)
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun when a Job trains on several GPUs
    run = run_job if rank == 0 else run_helper_rank
    status = run(argv[0], Registry(settings.database_url, settings.database_timeout_seconds), settings)
    return 0 if status in ("succeeded", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
