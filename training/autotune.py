"""``precision=auto`` and ``channels_last=auto`` for training, decided by measuring on the machine at hand.

Whether bf16 autocast or channels-last pays off depends on the processor (AMX tiles, AVX-512 bf16,
neither) and on the model (a tiny CNN on 28-px images is bound by memory traffic, not matrix work),
so nothing is assumed: a few training steps of each candidate run on a copy of the model with
synthetic data, and the fastest is kept. The choice and every measured rate are logged and stored
with the model. On CUDA, AMP is always a win and is not measured (bf16 where supported, else fp16).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .engine import Execution

log = logging.getLogger(__name__)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2")


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains with, and why: ``rates`` holds img/s per measured candidate (empty when not measured)."""

    precision: str
    channels_last: bool
    measured: bool
    rates: dict[str, float] = field(default_factory=dict)
    cpu: str = ""

    def execution(self, device: torch.device) -> Execution:
        return Execution(device=device, amp_dtype=DTYPES[self.precision], channels_last=self.channels_last)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in self.rates.items())
        how = f"measured img/s: {rates}" if self.measured else "as configured"
        return f"{self.precision}{' + channels-last' if self.channels_last else ''} ({how})"


def cpu_description() -> str:
    """The processor's model name and the flags that decide bf16 speed, e.g. ``"Xeon ... [amx_tile avx512_bf16]"``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return f"{name} [{' '.join(f for f in CPU_FLAGS if f in flags) or 'no AVX-512/AMX'}]"


def candidates(precision: str, channels_last: bool | str, device: torch.device) -> list[tuple[str, bool]]:
    """The (precision, channels-last) pairs worth measuring for this config on this device."""
    if precision == "auto":
        if device.type == "cuda":
            precisions = ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
        else:
            precisions = ["fp32", "bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ["fp32"]
    else:
        precisions = [precision]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [(p, cl) for p in precisions for cl in layouts]


class Trial:
    """A copy of ``model`` training on random data under one execution, for timing its steps."""

    def __init__(self, model: nn.Module, rt: Execution, shape: tuple[int, ...], num_classes: int):
        self.rt = rt
        self.model = copy.deepcopy(model).to(rt.device)
        if rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.x = rt.to_input(torch.randn(shape))
        self.y = torch.randint(0, num_classes, (shape[0],), device=rt.device)

    def step(self) -> None:
        with self.rt.autocast():
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize(self.rt.device)

    def rate(self, steps: int) -> float:
        """Images/s over ``steps`` timed steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return len(self.x) * steps / max(time.perf_counter() - start, 1e-9)


def measure(trials: dict[str, Trial], steps: int = 3, rounds: int = 3, budget_s: float = 10.0) -> dict[str, float]:
    """Each trial's best rate over interleaved rounds (one warm-up step each first).

    A shared machine's speed drifts by half within a minute, and a single pass per candidate once chose
    bf16 without channels-last at 1,194 img/s over bf16 + channels-last that trained at ~2,000: interleaving
    puts every candidate through the same moments, and the best round is the least disturbed one. Rounds
    after the first run only while the measuring stays under ``budget_s`` (a large model's steps are slow).
    """
    for trial in trials.values():
        trial.step()
    best = dict.fromkeys(trials, 0.0)
    start = time.perf_counter()
    for r in range(rounds):
        if r and time.perf_counter() - start > budget_s * r / rounds:
            break
        for name, trial in trials.items():
            best[name] = max(best[name], trial.rate(steps))
    return best


def choose(
    precision: str,
    channels_last: bool | str,
    device: torch.device,
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
) -> PrecisionChoice:
    """Measure each candidate (when there is more than one) and keep the fastest.

    Raises:
        ValueError: fp16 asked for on a CPU.
    """
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    options = candidates(precision, channels_last, device)
    cpu = cpu_description() if device.type == "cpu" else torch.cuda.get_device_name(device)
    if len(options) == 1:
        p, cl = options[0]
        return PrecisionChoice(p, cl, measured=False, cpu=cpu)
    shape = (min(batch_size, 64), *input_shape)
    trials = {f"{p}{'+cl' if cl else ''}": Trial(model, Execution(device, DTYPES[p], cl), shape, num_classes)
              for p, cl in options}  # fmt: skip
    rates = measure(trials)
    del trials
    best = max(rates, key=rates.get)
    p, _, cl = best.partition("+")
    choice = PrecisionChoice(p, bool(cl), measured=True, rates={k: round(v, 1) for k, v in rates.items()}, cpu=cpu)
    log.info("precision: %s on %s", choice.describe(), cpu)
    return choice
