"""One GPU run, prepared once: GPU serving (batched fp32/fp16/bf16), JPEG decoding on the GPU against PIL on the
CPU, the decode + model pipeline, and AMP training throughput, printed as one table.

    make gpu-check                                  # set up, run the CUDA tests, then this (about 5 minutes)
    python benchmarks/gpu_check.py --out gpu.json   # this alone: needs only torch, torchvision, timm and Pillow
    python benchmarks/gpu_check.py --dry-run        # the same steps on the CPU at toy sizes (the suite runs it)

The model is the serving benchmark's: EfficientNet-Lite0 at 224 px (resize 256 bicubic, centre crop, mean = std =
0.5), random weights (speed does not depend on them); the images are a 640x480 photo as a JPEG of quality 90.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

ARCH = "tf_efficientnet_lite0"
SIZE, RESIZE = 224, 256
MEAN = STD = 0.5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Row:
    part: str
    setting: str
    img_per_s: float
    note: str = ""


def photo_jpeg(width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    """A real photograph (scikit-image's astronaut when installed, else a smooth synthetic scene) as a JPEG."""
    try:
        from skimage import data

        img = Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC)
    except ImportError:
        y, x = np.mgrid[0:height, 0:width]
        arr = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
        img = Image.fromarray(arr.astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def rate(fn: Callable[[], int], device: torch.device, seconds: float, warmup: int = 3) -> float:
    """Items per second of ``fn`` (which returns how many items it did), timed for about ``seconds``."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    sync()
    return done / (time.perf_counter() - start)


def cpu_preprocess(data: bytes) -> np.ndarray:
    """PIL on the CPU, as the service does it: draft-mode JPEG decode, resize, centre crop, normalise."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (RESIZE, RESIZE))
    img = img.convert("RGB")
    w, h = img.size
    scale = RESIZE / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = img.size
    left, top = (w - SIZE) // 2, (h - SIZE) // 2
    arr = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)


def gpu_preprocess(datas: list[bytes], device: torch.device) -> torch.Tensor:
    """nvJPEG through torchvision (a batch at once), then resize, centre crop and normalise on the device."""
    from torchvision.io import decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    images = decode_jpeg(encoded, device=device) if device.type == "cuda" else [decode_jpeg(e) for e in encoded]
    x = torch.stack(images).float().div_(255)
    h, w = x.shape[-2:]
    scale = RESIZE / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", align_corners=False,
                      antialias=True)  # fmt: skip
    top, left = (x.shape[-2] - SIZE) // 2, (x.shape[-1] - SIZE) // 2
    return (x[..., top : top + SIZE, left : left + SIZE] - MEAN) / STD


def serving_rows(model: torch.nn.Module, device: torch.device, batches: list[int], dtypes: list[str],
                 seconds: float) -> list[Row]:  # fmt: skip
    rows = []
    for name in dtypes:
        m = timm.create_model(ARCH, num_classes=1000).eval().to(device, DTYPES[name], memory_format=torch.channels_last)
        m.load_state_dict(model.state_dict())
        for batch in batches:
            x = torch.randn(batch, 3, SIZE, SIZE, device=device, dtype=DTYPES[name]).contiguous(
                memory_format=torch.channels_last
            )

            @torch.inference_mode()
            def infer(m=m, x=x) -> int:
                m(x)
                return len(x)

            rows.append(Row("serving: model", f"{name}, batch {batch}", rate(infer, device, seconds)))
    return rows


def decode_rows(device: torch.device, batch: int, seconds: float, threads: int) -> list[Row]:
    data = photo_jpeg()
    datas = [data] * batch
    with ThreadPoolExecutor(threads) as pool:
        cpu = rate(lambda: len(list(pool.map(cpu_preprocess, datas))), torch.device("cpu"), seconds, warmup=1)
    gpu = rate(lambda: len(gpu_preprocess(datas, device)), device, seconds)
    where = "nvJPEG on the GPU" if device.type == "cuda" else "libjpeg through torchvision (dry run)"
    return [Row("decode + preprocess", f"PIL draft mode, {threads} CPU threads", cpu, "640x480 JPEG q90 -> 224"),
            Row("decode + preprocess", f"{where}, batch {batch}", gpu, f"{gpu / cpu:.1f}x PIL")]  # fmt: skip


def pipeline_rows(model: torch.nn.Module, device: torch.device, batch: int, dtype: str, seconds: float) -> list[Row]:
    m = timm.create_model(ARCH, num_classes=1000).eval().to(device, DTYPES[dtype], memory_format=torch.channels_last)
    m.load_state_dict(model.state_dict())
    datas = [photo_jpeg()] * batch

    @torch.inference_mode()
    def run() -> int:
        x = gpu_preprocess(datas, device).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
        m(x).float().softmax(-1).cpu()
        return batch

    return [Row("decode + model", f"GPU decode, {dtype}, batch {batch}", rate(run, device, seconds), "end to end")]


def training_rows(device: torch.device, batch: int, dtypes: list[str], seconds: float) -> list[Row]:
    rows = []
    for name in dtypes:
        torch.manual_seed(0)
        m = timm.create_model(ARCH, num_classes=10).to(device, memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        x = torch.randn(batch, 3, SIZE, SIZE, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        amp = name != "fp32"

        def step(m=m, opt=opt, scaler=scaler, x=x, y=y, amp=amp, dtype=DTYPES[name]) -> int:
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = F.cross_entropy(m(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return len(x)

        label = "fp32" if not amp else f"AMP {name}"
        rows.append(Row("training", f"{label}, batch {batch}", rate(step, device, seconds)))
    base = rows[0].img_per_s
    for row in rows[1:]:
        row.note = f"{row.img_per_s / base:.2f}x fp32"
    return rows


def table(rows: list[Row], device_name: str) -> str:
    lines = [f"GPU check on {device_name} (torch {torch.__version__}, {ARCH} at {SIZE} px)", "",
             "| part | setting | img/s | note |", "| --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {r.part} | {r.setting} | {r.img_per_s:,.0f} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="run every step on the CPU at toy sizes")
    p.add_argument("--seconds", type=float, default=None, help="time per measurement (default 3; dry run 0.2)")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: run this on a machine with an NVIDIA GPU (or --dry-run on the CPU)")
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    seconds = args.seconds or (0.2 if args.dry_run else 3.0)
    if args.dry_run:
        batches, serve_dtypes, train_dtypes, decode_batch, train_batch = [1, 2], ["fp32"], ["fp32", "bf16"], 2, 2
    else:
        torch.backends.cudnn.benchmark = True
        bf16 = torch.cuda.is_bf16_supported()
        serve_dtypes = ["fp32", "fp16", *(["bf16"] if bf16 else [])]
        train_dtypes = ["fp32", "fp16", *(["bf16"] if bf16 else [])]
        batches, decode_batch, train_batch = [1, 8, 32, 128], 32, 128
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'dry run'})"
    model = timm.create_model(ARCH, num_classes=1000).eval()
    rows = serving_rows(model, device, batches, serve_dtypes, seconds)
    rows += decode_rows(device, decode_batch, seconds, threads=4 if device.type == "cuda" else 1)
    rows += pipeline_rows(model, device, decode_batch, serve_dtypes[-1], seconds)
    rows += training_rows(device, train_batch, train_dtypes, seconds)
    print(table(rows, name))
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                        "rows": [asdict(r) for r in rows]}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
