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


def step_rate(model: nn.Module, rt: Execution, shape: tuple[int, ...], num_classes: int, steps: int = 3) -> float:
    """Training img/s of a copy of ``model`` on random data: one warm-up step, then ``steps`` timed ones."""
    trial = copy.deepcopy(model).to(rt.device)
    if rt.channels_last:
        trial = trial.to(memory_format=torch.channels_last)
    trial.train()
    opt = torch.optim.SGD([p for p in trial.parameters() if p.requires_grad], lr=1e-3)
    x = rt.to_input(torch.randn(shape))
    y = torch.randint(0, num_classes, (shape[0],), device=rt.device)
    loss_fn = nn.CrossEntropyLoss()
    elapsed = 0.0
    for i in range(steps + 1):
        start = time.perf_counter()
        with rt.autocast():
            logits = trial(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        if i:
            elapsed += time.perf_counter() - start
    return shape[0] * steps / max(elapsed, 1e-9)


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
    rates = {}
    for p, cl in options:
        rates[f"{p}{'+cl' if cl else ''}"] = step_rate(model, Execution(device, DTYPES[p], cl), shape, num_classes)
    best = max(rates, key=rates.get)
    p, _, cl = best.partition("+")
    choice = PrecisionChoice(p, bool(cl), measured=True, rates={k: round(v, 1) for k, v in rates.items()}, cpu=cpu)
    log.info("precision: %s on %s", choice.describe(), cpu)
    return choice
