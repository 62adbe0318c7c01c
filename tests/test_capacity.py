"""Workers and threads chosen from the cores a server may use (its affinity and its container's quota)."""

import pytest

from service.inference.capacity import MAX_AUTO_WORKERS, cgroup_cpu_quota, plan, usable_cores
from service.settings import Settings


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "expected"),
    [
        (2, None, None, (2, 1, 2, 2)),  # one worker a core, each with its core, and both cores for a lone image
        (1, None, None, (1, 1, 2, 1)),
        (16, None, None, (MAX_AUTO_WORKERS, 2, 2, 16)),  # each worker holds the model: the count stops at 8
        (4, 1, None, (1, 4, 4, 4)),  # one worker gets every core, and decodes on as many threads
        (4, 2, 1, (2, 1, 2, 1)),  # both as set: a lone image too runs on the threads asked for
    ],
)
def test_the_plan_uses_every_core_unless_told(cores, workers, threads, expected):
    capacity = plan(cores, workers, threads)
    assert (capacity.workers, capacity.threads, capacity.decode_threads, capacity.lone_threads) == expected
    assert capacity.cores == cores
    assert ("IMGCLF_WORKERS" in capacity.chosen) == (workers is not None)
    assert f"on {cores} core(s)" in capacity.describe()
    assert ("a lone image on" in capacity.describe()) == (capacity.lone_threads > capacity.threads)


def test_a_container_quota_caps_the_cores(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    v2.write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("200000"), period.write_text("100000")
    assert cgroup_cpu_quota(tmp_path / "absent", (quota, period)) == 2.0
    quota.write_text("-1")
    assert cgroup_cpu_quota(tmp_path / "absent", (quota, period)) is None
    assert cgroup_cpu_quota(tmp_path / "absent", (tmp_path / "a", tmp_path / "b")) is None


def test_settings_choose_from_the_cores_by_default(monkeypatch):
    monkeypatch.delenv("IMGCLF_WORKERS", raising=False)
    monkeypatch.delenv("IMGCLF_THREADS", raising=False)
    auto = Settings().capacity()
    assert auto.workers == min(usable_cores(), MAX_AUTO_WORKERS) and "one a core" in auto.chosen
    assert Settings().inference().workers == auto.workers
    monkeypatch.setenv("IMGCLF_WORKERS", "1")
    assert Settings().capacity().workers == 1 and Settings().inference().threads == usable_cores()
