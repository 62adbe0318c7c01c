"""Hostile input against a real server: every case gets a 4xx with a message, or a prediction when it is a
valid image; never a 5xx; the service stays ready and its memory bounded. The corpus is made here."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.server import Server, rss_bytes

pytestmark = pytest.mark.slow
JSON = {"Content-Type": "application/json"}


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _bomb(side: int = 60_000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny IDAT: decompression-bomb shaped."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def _photo(size=(64, 48), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def _animated(fmt: str) -> bytes:
    frames = [_photo(seed=i).convert("P") if fmt == "GIF" else _photo(seed=i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    img = _photo((64, 32))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    return _jpeg(img, exif=exif)


def _multipage_tiff() -> bytes:
    buf = io.BytesIO()
    _photo().save(buf, "TIFF", save_all=True, append_images=[_photo(seed=1), _photo(seed=2)])
    return buf.getvalue()


VALID = {
    "1x1": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
    "cmyk-jpeg": _jpeg(_photo(mode="CMYK")),
    "16-bit-png": _png(Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)),
    "palette": _png(_photo().convert("P")),
    "rgba": _png(_photo(mode="RGBA")),
    "la": _png(_photo(mode="LA")),
    "animated-gif": _animated("GIF"),
    "animated-webp": _animated("WEBP"),
    "exif-rotated": _exif_rotated(),
    "progressive-jpeg": _jpeg(_photo(), progressive=True),
    "multipage-tiff": _multipage_tiff(),
}
good = _jpeg(_photo((96, 96)))
INVALID = {
    "truncated-jpeg": good[: len(good) // 2],
    "truncated-png": _png(_photo((96, 96)))[:300],
    "zero-bytes": b"",
    "text": b"just some words, not pixels",
    "html": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
    "pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    "decompression-bomb": _bomb(),
    "huge-dimensions": _png(Image.new("1", (9000, 9000))),
    "url": b"http://169.254.169.254/latest/meta-data/",
    "garbage": bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
}


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    tag, _ = trained_model
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME="torch",
               IMGCLF_MAX_PIXELS="50000000", IMGCLF_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'r.db'}")  # fmt: skip
    srv = Server(env, tmp_path_factory.mktemp("hostile-server") / "serve.log").start()
    yield srv
    srv.stop()


def cases() -> list[tuple[str, dict]]:
    """(name, httpx request kwargs) for every hostile request; the URL path is in kwargs['url']."""
    out = []
    for name, data in {**VALID, **INVALID}.items():
        out.append((f"multipart {name}", {"url": "/classify", "files": {"image": (name, data, "image/jpeg")}}))
        out.append((f"raw {name}", {"url": "/classify", "content": data, "headers": {"Content-Type": "image/jpeg"}}))
        out.append((f"json {name}", {"url": "/classify_json", "json": {"images": [base64.b64encode(data).decode()]}}))
    b64 = base64.b64encode(good).decode()
    out += [
        ("wrong field name", {"url": "/classify", "files": {"picture": ("x.jpg", good, "image/jpeg")}}),
        ("text instead of a file", {"url": "/classify", "data": {"image": "http://example.com/cat.jpg"}}),
        ("too many images", {"url": "/classify_batch", "files": [("images", (f"{i}.jpg", good)) for i in range(80)]}),
        ("batch wrong field", {"url": "/classify_batch", "files": {"photos": ("x.jpg", good)}}),
        ("batch not multipart", {"url": "/classify_batch", "json": {"images": [b64]}}),
        ("no content type", {"url": "/classify", "content": good}),
        ("oversized body", {"url": "/classify", "content": b"\xff" * (3 * 1024 * 1024),
                            "headers": {"Content-Type": "image/jpeg"}}),
        ("oversized json", {"url": "/classify_json", "json": {"images": [b64] * 2000}}),
        ("malformed json", {"url": "/classify_json", "content": b'{"images": [', "headers": JSON}),
        ("json wrong type", {"url": "/classify_json", "json": {"images": "not a list"}}),
        ("json extra field", {"url": "/classify_json", "json": {"images": [b64], "url": "http://x"}}),
        ("json empty list", {"url": "/classify_json", "json": {"images": []}}),
        ("invalid base64", {"url": "/classify_json", "json": {"images": ["!!!not base64!!!"]}}),
        ("url as base64", {"url": "/classify_json", "json": {"images": ["https://example.com/cat.jpg"]}}),
        ("data url", {"url": "/classify_json", "json": {"images": ["data:image/jpeg;base64," + b64]}}),
        ("v2 garbage json", {"url": "/v2/models/x/infer", "content": b"\x00\x01", "headers": JSON}),
        ("v2 wrong header length", {"url": "/v2/models/x/infer", "content": b"{}",
                                    "headers": {"Inference-Header-Content-Length": "99"}}),
    ]  # fmt: skip
    for top_k in ("0", "-1", "100000", "abc", "1e3", ""):
        out.append((f"top_k={top_k!r}", {"url": f"/classify?top_k={top_k}", "files": {"image": ("x.jpg", good)}}))
    return out


def test_hostile_corpus_never_gets_a_5xx(server):
    before = rss_bytes(server.worker_pids())
    answers: dict[str, tuple[int, str]] = {}
    with httpx.Client(base_url=server.base, timeout=60) as client:
        for name, kwargs in cases():
            r = client.post(**kwargs)
            answers[name] = (r.status_code, r.text[:300])
    server_errors = {k: v for k, v in answers.items() if v[0] >= 500}
    assert not server_errors, server_errors
    for name, (status, text) in answers.items():
        if status != 200:
            assert 400 <= status < 500 and '"error"' in text or '"detail"' in text, (name, status, text)
    for name in VALID:  # valid images are classified, whichever way they come
        for how in ("multipart", "raw", "json"):
            assert answers[f"{how} {name}"][0] == 200, (name, how, answers[f"{how} {name}"])
    for name in INVALID:
        assert answers[f"multipart {name}"][0] in (400, 413, 415), (name, answers[f"multipart {name}"])
    assert answers["multipart decompression-bomb"][0] == 413 and "pixels" in answers["multipart decompression-bomb"][1]
    assert answers["data url"][0] == 200  # a data: URL carries the image itself
    assert "never fetched" in answers["url as base64"][1]
    assert httpx.get(server.base + "/readyz").status_code == 200
    after = rss_bytes(server.worker_pids())
    assert after < before + 300 * 2**20, f"worker memory grew from {before >> 20} to {after >> 20} MiB"
    # the figure for the README's reliability section
    print(
        f"\nhostile corpus: {len(answers)} requests, {sum(s == 200 for s, _ in answers.values())} classified, "
        f"{sum(400 <= s < 500 for s, _ in answers.values())} refused with a 4xx, 0 server errors"
    )
