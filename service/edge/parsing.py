"""Request parsing for the HTTP edge: bodies, multipart forms, image uploads, base64 (bounded sizes)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.serving.classify import Admission

ACCEPTED = "multipart/form-data with a file field 'image', or the raw image bytes with an image/* content type"


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the maximum is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the maximum of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form() parse what was already read
    return body


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, limit: int, max_files: int):
    await read_body(request, limit)
    try:
        return await request.form(max_files=max_files, max_fields=max_files + 8)
    except Exception as exc:  # noqa: BLE001 - starlette raises several kinds for a broken multipart body
        raise InvalidInput("malformed multipart body: the boundary, a part's headers or the form limits are broken "
                           f"({type(exc).__name__}); send multipart/form-data as an HTTP library writes it",
                           reason="bad_multipart") from None  # fmt: skip


async def file_bytes(value: Any, field: str, limit: int) -> bytes:
    if not isinstance(value, UploadFile):
        hint = " URLs are never fetched; upload the image itself." if str(value).startswith(("http:", "https:")) else ""
        raise InvalidInput(f"field {field!r} must be a file upload, not text.{hint}", reason="not_a_file")
    data = await value.read()
    if len(data) > limit:
        raise PayloadTooLarge(f"{value.filename or field} is {len(data)} bytes; the maximum is {limit} bytes")
    return data


async def single_image(request: Request, limit: int) -> tuple[bytes, int | None]:
    media = media_type(request)
    if media.startswith("image/") or media == "application/octet-stream":
        return await read_body(request, limit), None
    if media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(f"content type {media or '(none)'} is not accepted; send {ACCEPTED}. "
                                   "For base64 in JSON use POST /classify_json.")  # fmt: skip
    form = await read_form(request, limit + 64 * 1024, max_files=1)
    files = form.getlist("image")
    if len(files) != 1:
        found = ", ".join(sorted(set(form.keys()))) or "none"
        raise InvalidInput(f"expected exactly one multipart field 'image'; found fields: {found}",
                           reason="bad_field")  # fmt: skip
    top_k = form.get("top_k")
    if top_k is not None and (not isinstance(top_k, str) or not re.fullmatch(r"\s*-?[0-9]{1,9}\s*", top_k)):
        raise InvalidInput(f"top_k must be an integer written in ASCII digits, got {str(top_k)[:40]!r}",
                           reason="bad_top_k")  # fmt: skip
    return await file_bytes(files[0], "image", limit), int(top_k) if top_k is not None else None


async def many_images(request: Request, limit: int, admission: Admission) -> list[bytes]:
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(f"send multipart/form-data with one 'images' file field per image; got "
                                   f"{media_type(request) or '(none)'}")  # fmt: skip
    form = await read_form(request, limit * admission.max_images, max_files=admission.max_images + 1)
    files = form.getlist("images") or form.getlist("image")
    if not files:
        found = ", ".join(sorted(set(form.keys()))) or "none"
        raise InvalidInput(f"expected one or more multipart fields 'images'; found fields: {found}",
                           reason="bad_field")  # fmt: skip
    admission.check(len(files))
    return [await file_bytes(f, "images", limit) for f in files]


def b64decode(value: str, index: int, limit: int) -> bytes:
    text = value.strip()
    if text.startswith(("http://", "https://", "ftp://", "file:")):
        raise InvalidInput(f"images[{index}] is a URL; URLs are never fetched: send the image base64-encoded",
                           reason="url_not_fetched")  # fmt: skip
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) * 3 // 4 > limit:
        raise PayloadTooLarge(f"images[{index}] is over the maximum of {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"images[{index}] is not valid base64 (standard alphabet, with padding)", reason="bad_base64"
        ) from None
