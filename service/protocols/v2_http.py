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
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from service.edge.parsing import read_body
from service.errors import InvalidInput, NotReady
from service.protocols import oip, wire
from service.serving import ClassifyPath
from service.settings import Settings

HEADER = "Inference-Header-Content-Length"


# ---------------------------------------------------------------- the request body's schema
class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputParameters(_Loose):
    binary_data_size: StrictInt | None = Field(None, ge=0)


class InputJSON(_Loose):
    name: str = Field(..., max_length=64)
    datatype: str = Field(..., max_length=16)
    shape: list[Annotated[StrictInt, Field(ge=0, lt=2**31)]] = Field(..., max_length=wire.MAX_DIMS)
    parameters: InputParameters = InputParameters()
    data: list[Any] = Field(default_factory=list)


class OutputParameters(_Loose):
    classification: StrictInt = Field(0, ge=0, le=1000)
    binary_data: StrictBool | None = None


class OutputJSON(_Loose):
    name: str = Field(..., max_length=64)
    parameters: OutputParameters = OutputParameters()


class RequestParameters(_Loose):
    binary_data_output: StrictBool = False


class InferRequestJSON(_Loose):
    """The Open Inference Protocol's JSON inference request, as far as this server reads it."""

    id: str | StrictInt | None = Field(None)
    inputs: list[InputJSON] = Field(..., min_length=1, max_length=16)
    outputs: list[OutputJSON] = Field(default_factory=list, max_length=16)
    parameters: RequestParameters = RequestParameters()


def create_oip_router(settings: Settings, get_path: Callable[[], ClassifyPath]) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict:
        return oip.server_metadata()

    @router.get("/health/live", summary="Server live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", summary="Server ready (503 until the model is loaded)")
    async def ready() -> Response:
        is_ready = get_path().ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.post("/repository/index", summary="Model repository index: the served model, its version and state")
    async def repository_index(request: Request) -> list[dict]:
        body = await read_body(request, 4096)
        try:
            ready = bool(json.loads(body or b"{}").get("ready", False))
        except (ValueError, AttributeError) as exc:
            raise InvalidInput('the body must be a JSON object such as {"ready": true}', reason="bad_json") from exc
        return oip.repository_index(get_path(), ready)

    @router.get("/models/{name}", summary="Model metadata: tensors and classes")
    @router.get("/models/{name}/versions/{version}", summary="Model metadata for a version")
    async def model_metadata(name: str, version: str = "") -> dict:
        return oip.model_metadata(oip.check_model(get_path(), name, version), name)

    @router.get("/models/{name}/ready", summary="Model ready")
    @router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
    async def model_ready(name: str, version: str = "") -> Response:
        """200 when served and ready; 503 while loading; 400 for a model or version this server does not serve."""
        try:
            oip.check_model(get_path(), name, version)
        except NotReady:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        except InvalidInput as exc:
            return JSONResponse({"error": exc.message, "reason": exc.reason}, status_code=400)
        return JSONResponse({"name": name, "ready": True})

    @router.post("/models/{name}/infer", summary="Inference (JSON, or JSON + binary tensors)")
    @router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version")
    async def infer(name: str, request: Request, version: str = "") -> Response:
        path = get_path()
        with path.arriving():
            body = await read_body(request, settings.grpc_max_message_bytes)
            req = parse_request(name, version, body, request.headers.get(HEADER))
            resp = await oip.infer(path, req)
        return encode_response(resp, req)

    return router


def parse_request(name: str, version: str, body: bytes, header_length: str | None) -> oip.InferRequest:
    """The request as the protocol's JSON schema (:class:`InferRequestJSON`) says, plus any binary tensors.

    Raises:
        InvalidInput: not JSON, nested too deeply, or any field of the wrong type or range (the message
            names each field and what it must be).
    """
    if header_length is not None and not header_length.isdigit():
        raise InvalidInput(f"{HEADER} must be a non-negative integer", reason="bad_json")
    size = int(header_length) if header_length is not None else len(body)
    if not 0 < size <= len(body):
        raise InvalidInput(f"{HEADER} {size} does not fit a body of {len(body)} bytes", reason="bad_json")
    try:
        raw_doc = json.loads(body[:size])
        if not isinstance(raw_doc, dict) or not isinstance(raw_doc.get("inputs"), list):
            raise InvalidInput("the inference request needs an 'inputs' list", reason="bad_json")
        doc = InferRequestJSON.model_validate(raw_doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInput(f"the inference request does not fit the protocol: {problems}",
                           reason="bad_json") from None  # fmt: skip
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            what = "is nested too deeply"
        elif isinstance(exc, json.JSONDecodeError):
            what = f"is not valid JSON (line {exc.lineno}, column {exc.colno})"
        else:
            what = "is not valid JSON (UTF-8 text expected)"
        raise InvalidInput(f"the inference request {what}", reason="bad_json") from None
    binary, offset = body[size:], 0
    inputs = []
    for item in doc.inputs:
        n = item.parameters.binary_data_size
        if n is not None:
            raw, offset = binary[offset : offset + n], offset + n
            if len(raw) != n:
                raise InvalidInput(f"input {item.name!r}: binary data runs past the body", reason="bad_tensor")
            data = wire.decode_bytes(raw) if item.datatype == "BYTES" else wire.decode_numeric(raw, item.datatype,
                                                                                             item.shape)  # fmt: skip
        else:
            data = _json_data(item)
        inputs.append(oip.Tensor(item.name, item.datatype, item.shape, data))
    all_binary = doc.parameters.binary_data_output
    outputs = [oip.RequestedOutput(o.name, o.parameters.classification,
                                   all_binary if o.parameters.binary_data is None else o.parameters.binary_data)
               for o in doc.outputs]  # fmt: skip
    if not outputs:
        outputs = [oip.RequestedOutput(oip.OUTPUT, binary=all_binary)]
    return oip.InferRequest(name, version, "" if doc.id is None else str(doc.id), inputs, outputs)


def _json_data(item: InputJSON) -> Any:
    try:
        values = np.asarray(item.data, dtype=object).reshape(-1).tolist()
    except ValueError:
        raise InvalidInput(f"input {item.name!r}: data must be a flat or regularly nested list",
                           reason="bad_tensor") from None  # fmt: skip
    shape = item.shape
    if item.datatype == "BYTES":
        try:
            return [base64.b64decode(v, validate=True) for v in values]
        except (binascii.Error, ValueError, TypeError):
            raise InvalidInput(f"input {item.name!r}: BYTES elements must be base64 strings in JSON (or send "
                               "binary tensor data)", reason="bad_base64") from None  # fmt: skip
    try:
        return wire.decode_numeric(np.asarray(values, dtype="<f4").tobytes(), item.datatype, shape)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {item.name!r}: data must be numbers", reason="bad_tensor") from None


def encode_response(resp: oip.InferResponse, req: oip.InferRequest) -> Response:
    binary_wanted = {o.name: o.binary for o in req.outputs}
    outputs, blobs = [], []
    for t in resp.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary_wanted.get(t.name):
            blob = wire.tensor_bytes(t)
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
