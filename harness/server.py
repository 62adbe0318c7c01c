"""Start and stop a real `bentoml serve` subprocess on free local ports, and measure its workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None):
        self.log_path = log_path
        self.port = port or free_port()
        self.grpc_port = free_port()  # its own: workers of one server share a port (SO_REUSEPORT), servers must not
        self.env = dict(os.environ, IMGCLF_GRPC_PORT=str(self.grpc_port), IMGCLF_GRPC_HOST="127.0.0.1", **env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Server:
        cmd = [sys.executable, "-m", "bentoml", "serve", "--port", str(self.port), "--host", "127.0.0.1"]
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        if not wait_ready(self.proc, lambda: httpx.get(self.base + "/readyz", timeout=2), timeout, self.log):
            self.stop()
            raise RuntimeError(f"server not ready in {timeout:.0f} s: {self.log()[-3000:]}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The server's worker processes: children of the supervisor (each runs in a session of its own)."""
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split() if int(p) != self.proc.pid]
        return [p for p in pids if b"_bentoml_impl.worker" in _cmdline(p)]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def wait_ready(proc: subprocess.Popen, probe: Callable[[], httpx.Response], timeout: float,
               log: Callable[[], str]) -> bool:  # fmt: skip
    """True once ``probe`` answers 200 within ``timeout``; False if it never does; raises if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[1:4]} exited with {proc.returncode}: {log()[-3000:]}")
        try:
            if probe().status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def served_models(metrics_text: str) -> dict[str, str]:
    """pid -> model tag each live worker serves, from imgclf_model_info (value 1)."""
    out = {}
    for m in re.finditer(r"^imgclf_model_info\{([^}]*)\} ([0-9.]+)$", metrics_text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if float(m.group(2)) == 1.0:
            out[labels["pid"]] = labels["model"]
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of ``pids`` together (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of ``root`` and every live descendant: a server's supervisor, workers and their
    helper processes, whichever session each runs in."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: the parent's pid
        times[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total
