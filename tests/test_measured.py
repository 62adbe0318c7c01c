"""A server's workers measure the runtime and the batch sizes once, one at a time (service.inference.measured)."""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from service.inference import classifier
from service.inference.classifier import build_classifier
from service.inference.measured import server_key
from service.inference.options import InferenceOptions
from training.store import load_model


def test_the_workers_of_one_server_measure_once_and_share_what_they_found(trained_model, monkeypatch):
    tag, _ = trained_model
    timed = []
    real = classifier.measured_limit
    monkeypatch.setattr(classifier, "measured_limit", lambda infer, batch: timed.append(1) or real(infer, batch))
    options = InferenceOptions(runtime="torch", max_batch_size=4, threads=1, drift_sample=0, measured_by="server-a")
    # two workers loading at once (threads here: the lock is taken per open file, as between processes)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: build_classifier(load_model(tag), options), range(2))
    assert len(timed) == 1  # the other waited for the record instead of timing beside it
    assert first.runtime.name == second.runtime.name == "torch"
    assert first.batch_limit == second.batch_limit
    assert first.runtime_report["batch"] == second.runtime_report["batch"]
    assert first.runtime_report["measured_in"] == second.runtime_report["measured_in"] == f"worker {os.getpid()}"
    assert second.infer(_batch(second)).shape == (2, len(second.classes))  # the reused record serves

    # another server (or the next start of this one) measures afresh, and so does a worker measuring for itself
    build_classifier(load_model(tag), replace(options, measured_by="server-b"))
    build_classifier(load_model(tag), replace(options, measured_by=None))
    assert len(timed) == 3


def _batch(clf):
    return np.zeros((2, *clf.input_shape), np.float32)


def test_the_server_key_names_the_parent_process_and_when_it_started():
    key = server_key()
    assert key == server_key() and key.startswith(f"{os.getppid()}-") and not key.endswith("?")
