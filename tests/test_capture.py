"""Capture of images worth labelling: the choice on constructed scores, and the store against a real
registry (SQLite) and folder: only the image kept, once, within the quota, forgotten after the retention."""

from __future__ import annotations

import time

import numpy as np
from conftest import colour_image, encode

from service.retraining.capture import Capturer, worth_labelling
from service.retraining.registry import Registry

ALL = frozenset({"low_confidence", "near_tie", "drift", "random"})
CLASSES = ["red", "green", "blue"]


def test_the_first_reason_that_holds_is_given():
    unsure = worth_labelling(np.array([0.4, 0.35, 0.25]), ALL, low_confidence=0.5, near_tie=0.1, drifting=False)
    assert unsure.reason == "low_confidence" and unsure.predicted == 0 and abs(unsure.margin - 0.05) < 1e-6
    tie = worth_labelling(np.array([0.05, 0.5, 0.45]), ALL - {"low_confidence"}, 0.5, 0.1, False)
    assert tie.reason == "near_tie" and tie.predicted == 1
    sure = np.array([0.01, 0.01, 0.98])
    assert worth_labelling(sure, ALL - {"random"}, 0.5, 0.1, drifting=False) is None
    assert worth_labelling(sure, ALL - {"random"}, 0.5, 0.1, drifting=True).reason == "drift"
    assert worth_labelling(sure, frozenset({"random"}), 0.5, 0.1, False).reason == "random"
    assert worth_labelling(sure, frozenset(), 0.5, 0.1, True) is None


def capturer(tmp_path, **kw) -> tuple[Capturer, Registry]:
    tmp_path.mkdir(exist_ok=True)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    args = dict(reasons=["low_confidence"], sample=1.0, max_bytes=10**7, low_confidence=0.5, near_tie=0.1) | kw
    return Capturer(registry, tmp_path / "capture", "m", **args), registry


def test_kept_once_in_the_queue_order_with_only_the_image(tmp_path):
    cap, registry = capturer(tmp_path)
    images = [encode(colour_image((200, 40, 40), 32, seed=i)) for i in range(3)]
    for data, top in zip(images, (0.45, 0.40, 0.48), strict=True):
        cap.offer(data, np.array([top, top - 0.05 * (data == images[1]) - 0.01, 1 - 2 * top + 0.01]), "m:v1", CLASSES)
    cap.offer(images[0], np.array([0.45, 0.44, 0.11]), "m:v1", CLASSES)  # the same image again: kept once
    cap.offer(encode(colour_image((1, 2, 3), 32)), np.array([0.9, 0.05, 0.05]), "m:v1", CLASSES)  # sure: not kept
    cap.close()
    queue = registry.captures("m")
    assert len(queue) == 3
    assert [c.margin for c in queue] == sorted(c.margin for c in queue)  # least certain first
    assert all(c.status == "pending" and c.predicted == "red" and c.tag == "m:v1" for c in queue)
    files = sorted((tmp_path / "capture" / "m").iterdir())
    assert len(files) == 3 and {f.read_bytes() for f in files} == set(images)


def test_quota_sampling_and_retention(tmp_path):
    data = [encode(colour_image((40, 60, 220), 32, seed=i)) for i in range(4)]
    cap, registry = capturer(tmp_path, max_bytes=len(data[0]) + len(data[1]) + len(data[2]) // 2)
    for d in data:
        cap.offer(d, np.array([0.4, 0.3, 0.3]), "m:v1", CLASSES)
    cap.close()
    assert len(registry.captures("m")) == 2  # the third would pass the quota
    off, registry_off = capturer(tmp_path / "off", sample=0.0)
    off.offer(data[0], np.array([0.4, 0.3, 0.3]), "m:v1", CLASSES)
    off.close()
    assert registry_off.captures("m") == []
    assert cap.expire(older_than_hours=1) == 0
    time.sleep(0.01)
    assert cap.expire(older_than_hours=0) == 2
    assert registry.captures("m", None) == [] and not any((tmp_path / "capture" / "m").iterdir())
