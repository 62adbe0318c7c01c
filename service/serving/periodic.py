"""Periodic tasks on one thread: following the champion, sweeping jobs, process metrics (the service
registers them); ``wake`` runs them now (after a promotion or rollback this worker handled)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, interval: float, tasks: list[Callable[[], object]] | None = None):
        self.interval = interval
        self.tasks = list(tasks or [])
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="periodic-tasks")
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_once(self) -> None:
        for task in self.tasks:
            try:
                task()
            except Exception as exc:  # noqa: BLE001 - a registry outage, say, must not stop serving
                log.error("periodic task %s failed (serving goes on): %s", getattr(task, "__qualname__", task), exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.run_once()
