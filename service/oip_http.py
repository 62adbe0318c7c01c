"""The Open Inference Protocol over HTTP at ``/v2``: health, metadata and infer (JSON or binary tensors).

Requests are JSON, or JSON followed by binary tensor data when ``Inference-Header-Content-Length``
says how long the JSON part is (Triton's binary extension, what ``tritonclient.http`` sends). In
plain JSON, BYTES elements are base64 strings (encoded images); FP32 data is a flat or nested list.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from . import oip
from .errors import InvalidInput, NotReady
from .parsing import read_body
from .serving import ServingState

HEADER = "Inference-Header-Content-Length"


def create_oip_router(get_state: Callable[[], ServingState]) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict:
        return oip.server_metadata()

    @router.get("/health/live", summary="Server live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="Server ready (503 until the model is loaded)")
    async def ready() -> Response:
        is_ready = get_state().ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.post("/repository/index", summary="Model repository index: the served model, its version and state")
    async def repository_index(request: Request) -> list[dict]:
        body = await read_body(request, 4096)
        try:
            ready = bool(json.loads(body or b"{}").get("ready", False))
        except (ValueError, AttributeError) as exc:
            raise InvalidInput('the body must be a JSON object such as {"ready": true}', reason="bad_json") from exc
        return oip.repository_index(get_state(), ready)

    @router.get("/models/{name}", summary="Model metadata: tensors and classes")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata for a version")
    async def model_metadata(name: str, version: str = "") -> dict:
        return oip.model_metadata(oip.check_model(get_state(), name, version), name)

    @router.get("/models/{name}/ready", summary="Model ready")
    @router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
    async def model_ready(name: str, version: str = "") -> Response:
        """200 when served and ready; 503 while loading; 400 for a model or version this server does not serve."""
        try:
            oip.check_model(get_state(), name, version)
        except NotReady:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        except InvalidInput as exc:
            return JSONResponse({"error": exc.message, "reason": exc.reason}, status_code=400)
        return JSONResponse({"name": name, "ready": True})

    @router.post("/models/{name}/infer", summary="Inference (JSON, or JSON + binary tensors)")
    @router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version")
    async def infer(name: str, request: Request, version: str = "") -> Response:
        state = get_state()
        with state.arriving():
            body = await read_body(request, state.settings.grpc_max_message_bytes)
            req = parse_request(name, version, body, request.headers.get(HEADER))
            resp = await oip.infer(state, req)
        return encode_response(resp, req)

    return router


def parse_request(name: str, version: str, body: bytes, header_length: str | None) -> oip.InferRequest:
    try:
        size = int(header_length) if header_length is not None else len(body)
        if not 0 < size <= len(body):
            raise ValueError(f"{HEADER} {size} does not fit a body of {len(body)} bytes")
        doc = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}", reason="bad_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InvalidInput("the inference request needs an 'inputs' list", reason="bad_json")
    binary, offset = body[size:], 0
    inputs = []
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not {"name", "datatype", "shape"} <= item.keys():
            raise InvalidInput("each input needs name, datatype and shape", reason="bad_inputs")
        shape = [int(d) for d in item["shape"]]
        n = (item.get("parameters") or {}).get("binary_data_size")
        if n is not None:
            raw, offset = binary[offset : offset + int(n)], offset + int(n)
            if len(raw) != int(n):
                raise InvalidInput(f"input {item['name']!r}: binary data runs past the body", reason="bad_tensor")
            data = oip.decode_bytes(raw) if item["datatype"] == "BYTES" else oip.decode_numeric(raw, item["datatype"],
                                                                                                shape)  # fmt: skip
        else:
            data = _json_data(item, shape)
        inputs.append(oip.Tensor(item["name"], item["datatype"], shape, data))
    all_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    outputs = [oip.RequestedOutput(o["name"], int((o.get("parameters") or {}).get("classification", 0)),
                                   bool((o.get("parameters") or {}).get("binary_data", all_binary)))
               for o in doc.get("outputs") or []]  # fmt: skip
    if not outputs:
        outputs = [oip.RequestedOutput(oip.OUTPUT, binary=all_binary)]
    return oip.InferRequest(name, version, str(doc.get("id", "")), inputs, outputs)


def _json_data(item: dict, shape: list[int]) -> Any:
    values = np.asarray(item.get("data", []), dtype=object).reshape(-1).tolist()
    if item["datatype"] == "BYTES":
        try:
            return [base64.b64decode(v, validate=True) for v in values]
        except (binascii.Error, ValueError, TypeError):
            raise InvalidInput(f"input {item['name']!r}: BYTES elements must be base64 strings in JSON (or send "
                               "binary tensor data)", reason="bad_base64") from None  # fmt: skip
    try:
        return oip.decode_numeric(np.asarray(values, dtype="<f4").tobytes(), item["datatype"], shape)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {item['name']!r}: data must be numbers", reason="bad_tensor") from None


def encode_response(resp: oip.InferResponse, req: oip.InferRequest) -> Response:
    binary_wanted = {o.name: o.binary for o in req.outputs}
    outputs, blobs = [], []
    for t in resp.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary_wanted.get(t.name):
            blob = oip.tensor_bytes(t)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [b.decode() for b in t.data] if t.datatype == "BYTES" else t.data.reshape(-1).tolist()
        outputs.append(entry)
    head = json.dumps({"model_name": resp.model_name, "model_version": resp.model_version, "id": resp.id,
                       "outputs": outputs}).encode()  # fmt: skip
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER: str(len(head))})  # fmt: skip
