"""What both peer servers share: the exported model (ONNX), its preprocessing, and the answer's shape.

Written as each framework's documentation teaches (PIL decode, resize, centre crop, normalise; an ONNX Runtime
session with the given threads), run from their own virtualenv (only numpy, Pillow and onnxruntime beside the
framework), so nothing of this service's code is in the peers' path.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

MODEL_DIR = Path(os.environ["PEER_MODEL_DIR"])
SPEC = json.loads((MODEL_DIR / "preprocessing.json").read_text())
CLASSES = json.loads((MODEL_DIR / "classes.json").read_text())
THREADS = int(os.environ.get("PEER_THREADS", "2"))
MAX_BATCH, MAX_WAIT_MS = int(os.environ.get("PEER_MAX_BATCH", "32")), float(os.environ.get("PEER_MAX_WAIT_MS", "10"))
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[SPEC["interpolation"]]


def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def preprocess(data: bytes) -> np.ndarray:
    size = SPEC["input_size"]
    resize = int(size / SPEC["crop_pct"])
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (resize, resize))
    img = img.convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), RESAMPLE)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    arr = (arr - np.array(SPEC["mean"], np.float32)) / np.array(SPEC["std"], np.float32)
    return arr.transpose(2, 0, 1)


def infer(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    logits = sess.run(None, {sess.get_inputs()[0].name: batch})[0][:, : len(CLASSES)]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def top5(probs: np.ndarray) -> list[dict]:
    idx = np.argsort(-probs)[:5]
    return [{"label": CLASSES[i], "score": float(probs[i])} for i in idx]
