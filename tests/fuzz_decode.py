"""Atheris fuzz of the decode-and-validate function every image passes through (serving and training).

    python tests/fuzz_decode.py -max_total_time=60 -artifact_prefix=runs/fuzz-

Any outcome but a decoded image or an ImageError (the 4xx the service answers) is a crash. Seeds are
small valid images of each accepted format, so the fuzzer mutates real structure.
"""

import io
import sys

import atheris

from training import imaging
from training.imaging import ImageError, decode_image

# Coverage feedback from our decode-and-validate code (instrumenting all of Pillow and torch takes minutes).
for _fn in (imaging.open_image, imaging.to_mode, imaging.decode_image):
    atheris.instrument_func(_fn)

MAX_PIXELS = 4_000_000


def seeds() -> list[bytes]:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8))
    out = []
    for fmt in ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def test_one(data: bytes) -> None:
    for draft_size in (None, 8):  # as training decodes, and as serving does (JPEGs at a reduction)
        try:
            img = decode_image(data, 3, MAX_PIXELS, draft_size=draft_size)
        except ImageError:
            continue
        assert img.mode == "RGB" and img.width * img.height <= MAX_PIXELS


if __name__ == "__main__":
    corpus = sys.argv[-1] if len(sys.argv) > 1 and not sys.argv[-1].startswith("-") else None
    if corpus:
        from pathlib import Path

        Path(corpus).mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (Path(corpus) / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
