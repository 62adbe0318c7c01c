"""The Open Inference Protocol's binary encodings, shared by gRPC and HTTP: BYTES tensors (length-prefixed
elements), FP32 tensors, shapes, and response tensors in the raw encoding."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import InvalidInput

if TYPE_CHECKING:
    from service.protocols.oip import Tensor

DTYPES = {"FP32": np.dtype("<f4")}


def decode_bytes(raw: bytes) -> list[bytes]:
    """The protocol's raw BYTES encoding: each element a little-endian uint32 length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("malformed BYTES tensor: truncated length prefix", reason="bad_tensor")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise InvalidInput("malformed BYTES tensor: an element runs past the end", reason="bad_tensor")
        items.append(raw[offset : offset + n])
        offset += n
    return items


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


MAX_DIMS = 8


def check_shape(shape: Any) -> list[int]:
    """A tensor shape: a list of at most ``MAX_DIMS`` non-negative integers (``InvalidInput`` otherwise)."""
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise InvalidInput(f"a tensor shape must be a list of at most {MAX_DIMS} non-negative integers, got "
                           f"{str(shape)[:80]}", reason="bad_shape")  # fmt: skip
    return list(shape)


def decode_numeric(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"datatype {datatype} is not accepted here; use FP32 or BYTES", reason="bad_datatype")
    shape = check_shape(shape)
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) != needed:
        raise InvalidInput(f"{datatype} tensor of shape {shape} needs {needed} bytes, "
                           f"got {len(raw)}", reason="bad_shape")  # fmt: skip
    return np.frombuffer(raw, dtype=dtype).reshape(shape)  # sizes agree: the reshape cannot fail


def tensor_bytes(t: Tensor) -> bytes:
    """A response tensor in the raw encoding."""
    if t.datatype == "BYTES":
        return encode_bytes(t.data)
    return np.ascontiguousarray(t.data, bool if t.datatype == "BOOL" else "<f4").tobytes()
