"""The Open Inference Protocol over gRPC and HTTP, driven by tritonclient (a client nobody here wrote)."""

from __future__ import annotations

import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from conftest import COLOURS, colour_image, encode
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.server import Server
from service.errors import InvalidInput
from service.protocols import wire
from service.protocols.v2_http import HEADER, parse_request
from training.imaging import decode_image
from training.store import load_model
from training.transforms import EvalPreprocessor


# ---------------------------------------------------------------- wire encodings (no server)
def test_bytes_tensor_round_trip_and_malformed_input():
    items = [b"", b"abc", bytes(range(256))]
    assert wire.decode_bytes(wire.encode_bytes(items)) == items
    with pytest.raises(InvalidInput, match="truncated"):
        wire.decode_bytes(b"\x01\x00")
    with pytest.raises(InvalidInput, match="past the end"):
        wire.decode_bytes(struct.pack("<I", 10) + b"abc")


def test_numeric_tensors_need_the_right_size_and_type():
    x = np.arange(6, dtype="<f4")
    assert wire.decode_numeric(x.tobytes(), "FP32", [2, 3]).shape == (2, 3)
    with pytest.raises(InvalidInput, match="needs 24 bytes"):
        wire.decode_numeric(x.tobytes()[:-4], "FP32", [2, 3])
    with pytest.raises(InvalidInput, match="INT8 is not accepted"):
        wire.decode_numeric(b"\x00", "INT8", [1])


def test_http_request_parsing_json_and_binary():
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}],
           "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}  # fmt: skip
    req = parse_request("m", "", httpx.Request("POST", "/", json=doc).read(), None)
    assert req.inputs[0].data == [b"hello"] and req.outputs[0].classification == 3 and not req.outputs[0].binary
    head = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}'
    req = parse_request("m", "", head + wire.encode_bytes([b"hello"]), str(len(head)))
    assert req.inputs[0].data == [b"hello"]
    cases = [(b"{", None, "not valid JSON"), (b"[]", None, "'inputs' list"),
             (head, str(len(head) + 5), "does not fit"), (head, str(len(head)), "runs past")]  # fmt: skip
    for body, header, message in cases:
        with pytest.raises(InvalidInput, match=message):
            parse_request("m", "", body, header)
    bad_b64 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}
    with pytest.raises(InvalidInput, match="base64"):
        parse_request("m", "", httpx.Request("POST", "/", json=bad_b64).read(), None)


# ---------------------------------------------------------------- against a real server


@pytest.fixture(scope="module")
def oip_server(trained_model, tmp_path_factory):
    tag, _ = trained_model
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag,
               IMGCLF_RUNTIME="torch", IMGCLF_MAX_LATENCY_MS="300",
               IMGCLF_GRPC_MAX_MESSAGE_BYTES=str(256 * 1024),
               IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('oip') / 'registry.db'}")  # fmt: skip
    srv = Server(env, tmp_path_factory.mktemp("oip-server") / "serve.log").start()
    yield srv, tag
    srv.stop()


def images() -> list[bytes]:
    return [encode(colour_image(rgb, 40, seed=70 + i), "JPEG" if i % 2 else "PNG") for i, rgb in
            enumerate(COLOURS.values())]  # fmt: skip


def classify_http(base: str, data: bytes) -> list[dict]:
    return httpx.post(base + "/classify", files={"image": ("x", data)}, params={"top_k": 3}).json()["predictions"]


def bytes_input(module, data: list[bytes]):
    inp = module.InferInput("image", [len(data)], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object))
    return inp


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_health_and_metadata(oip_server, transport):
    srv, tag = oip_server
    name, version = tag.split(":")
    module, url = (tgrpc, f"127.0.0.1:{srv.grpc_port}") if transport == "grpc" else (thttp, f"127.0.0.1:{srv.port}")
    client = module.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(name, as_json=True) if transport == "grpc" else client.get_model_metadata(name)
    assert meta["versions"] == [version]
    assert [i["name"] for i in meta["inputs"]] == ["image", "input"]
    assert meta["outputs"][0]["shape"] == ["-1", "3"] if transport == "grpc" else [-1, 3]
    if transport == "http":
        assert meta["parameters"]["classes"] == ["blue", "green", "red"]
    else:  # gRPC metadata has no free-form fields: the classes ride in the model configuration
        config = client.get_model_config(name, as_json=True)["config"]
        assert config["parameters"]["classes"]["string_value"] == '["blue", "green", "red"]'
        assert client.get_server_metadata(as_json=True)["extensions"][0] == "classification"
    # discovery, as clients that list the repository before inferring do it
    index = client.get_model_repository_index(as_json=True) if transport == "grpc" else \
        client.get_model_repository_index()  # fmt: skip
    models = index["models"] if transport == "grpc" else index
    assert [(m["name"], m["version"], m["state"]) for m in models] == [(name, version, "READY")]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_infer_matches_http_classify(oip_server, transport, trained_model):
    srv, tag = oip_server
    name = tag.split(":")[0]
    module, url = (tgrpc, f"127.0.0.1:{srv.grpc_port}") if transport == "grpc" else (thttp, f"127.0.0.1:{srv.port}")
    client = module.InferenceServerClient(url)
    data = images()
    expected = [classify_http(srv.base, d) for d in data]

    probs = client.infer(name, [bytes_input(module, data)]).as_numpy("probabilities")
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    for row, preds in zip(probs, expected, strict=True):
        assert [int(i) for i in np.argsort(-row)] == [p["index"] for p in preds]
        assert np.allclose(sorted(row, reverse=True), [p["score"] for p in preds], atol=1e-5)

    wanted = [module.InferRequestedOutput("probabilities", class_count=2)]
    top = client.infer(name, [bytes_input(module, data)], outputs=wanted).as_numpy("probabilities")
    assert top.shape == (3, 2)
    for row, preds in zip(top, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert (int(index), label) == (preds[0]["index"], preds[0]["label"])
        assert abs(float(score) - preds[0]["score"]) < 1e-5

    # already preprocessed: the same transform the service uses, FP32 [N, C, H, W]
    stored = load_model(tag)
    transform = EvalPreprocessor(stored.preprocessing)
    pp = stored.preprocessing  # decoded as the service decodes (a JPEG at a reduction, when it has one to spare)
    x = np.stack([transform(decode_image(d, pp.channels, draft_size=pp.resize_size)) for d in data]).astype(np.float32)
    inp = module.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert np.allclose(client.infer(name, [inp]).as_numpy("probabilities"), probs, atol=1e-5)


@pytest.mark.slow
def test_grpc_errors_map_to_status_codes(oip_server):
    srv, tag = oip_server
    name = tag.split(":")[0]
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")

    def code_of(inputs, model=name) -> str:
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs)
        return err.value.status(), err.value.message()

    status, message = code_of([bytes_input(tgrpc, [b"not an image"])])
    assert status == "StatusCode.INVALID_ARGUMENT" and "image[0]" in message and "accepted formats" in message
    wrong = tgrpc.InferInput("input", [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    status, message = code_of([wrong])
    assert status == "StatusCode.INVALID_ARGUMENT" and "[N, 3, 32, 32]" in message
    status, message = code_of([bytes_input(tgrpc, images()[:1])], model="other")
    assert status == "StatusCode.INVALID_ARGUMENT" and "unknown model" in message
    big = bytes_input(tgrpc, [b"\x00" * (300 * 1024)])
    assert code_of([big])[0] == "StatusCode.RESOURCE_EXHAUSTED"
    assert httpx.get(srv.base + "/readyz").status_code == 200  # still serving

    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:  # the Kubernetes gRPC probe
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    metrics = httpx.get(srv.base + "/metrics").text
    assert 'imgclf_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"}' in metrics
    assert "imgclf_grpc_request_seconds_bucket" in metrics


@pytest.mark.slow
def test_http_v2_errors_and_json_infer(oip_server):
    srv, tag = oip_server
    name = tag.split(":")[0]
    import base64

    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(images()[0]).decode()]}]}  # fmt: skip
    r = httpx.post(f"{srv.base}/v2/models/{name}/infer", json=doc)
    assert r.status_code == 200 and HEADER not in r.headers
    assert len(r.json()["outputs"][0]["data"]) == 3
    r = httpx.post(f"{srv.base}/v2/models/other/infer", json=doc)
    assert r.status_code == 400 and "unknown model" in r.json()["error"]
    assert httpx.get(f"{srv.base}/v2/models/other/ready").status_code == 400


@pytest.mark.slow
def test_grpc_and_http_requests_share_batches(oip_server):
    """An idle batcher holds a gRPC image while an HTTP request is still arriving (300 ms window): one batch."""
    srv, tag = oip_server
    name = tag.split(":")[0]

    def batches() -> float:
        text = httpx.get(srv.base + "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("imgclf_inference_batch_size_count"))  # fmt: skip

    grpc_client = tgrpc.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
    http_client = httpx.Client(timeout=30)
    image = images()[1]
    started = threading.Event()

    def slow_body():
        yield image[:10]
        started.set()
        time.sleep(0.15)  # the gRPC image reaches the batcher meanwhile
        yield image[10:]

    def both() -> None:
        started.clear()
        with ThreadPoolExecutor(2) as pool:
            http = pool.submit(http_client.post, srv.base + "/classify", content=slow_body(),
                               headers={"Content-Type": "image/png"})  # fmt: skip
            assert started.wait(10)
            time.sleep(0.03)  # the HTTP request is in the server's hands
            grpc = pool.submit(grpc_client.infer, name, [bytes_input(tgrpc, images()[:1])])
            assert http.result().status_code == 200, http.result().text
            assert grpc.result().as_numpy("probabilities").shape == (1, 3)

    both()  # warm both paths up
    before = batches()
    both()
    assert batches() - before == 1


@pytest.mark.slow
def test_locust_grpc_user_runs_clean(oip_server, tmp_path):
    """The load test's gRPC user against the real server: a few seconds, no failures."""
    import csv
    import subprocess
    import sys

    from harness.server import ROOT

    srv, _ = oip_server
    locustfile = str(ROOT / "loadtests" / "locustfile.py")
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "OipGrpcUser", "--host", srv.base, "--headless",
           "-u", "4", "-r", "4", "-t", "4s", "--csv", str(tmp_path / "run")]  # fmt: skip
    env = dict(srv.env, GRPC_TARGET=f"127.0.0.1:{srv.grpc_port}", GRPC_TIMEOUT_S="10")
    locust = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = locust.communicate(timeout=120)[1][-3000:]
    except subprocess.TimeoutExpired:
        locust.kill()
        pytest.fail(f"Locust did not end a 4 s run in 120 s: {locust.communicate()[1][-3000:]}\n{srv.log()[-3000:]}")
    assert (tmp_path / "run_stats.csv").is_file(), said
    with open(tmp_path / "run_stats.csv") as fh:
        total = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    failures = (tmp_path / "run_failures.csv").read_text() if (tmp_path / "run_failures.csv").is_file() else ""
    assert int(total["Request Count"]) > 10 and int(total["Failure Count"]) == 0, (total, failures, said)


@pytest.mark.parametrize("doc, message", [
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": "x"}]}, "inputs.0.shape"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}]}, "inputs.0.shape.0"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2**40]}]}, "inputs.0.shape.0"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1] * 9}]}, "inputs.0.shape"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                  "parameters": {"binary_data_size": "abc"}}]}, "binary_data_size"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}], "outputs": "all"}, "outputs"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}], "outputs": [{"name": "p",
      "parameters": {"classification": "3"}}]}, "classification"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}], "parameters": []}, "parameters"),
    ({"inputs": []}, "inputs"),
])  # fmt: skip
def test_every_field_of_a_v2_request_is_validated_before_any_work(doc, message):
    import json

    with pytest.raises(InvalidInput, match="does not fit the protocol") as err:
        parse_request("m", "", json.dumps(doc).encode(), None)
    assert message in err.value.message and err.value.reason == "bad_json"


def test_deeply_nested_json_and_bad_tensors_are_invalid_input_not_errors():
    with pytest.raises(InvalidInput, match="nested too deeply"):
        parse_request("m", "", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None)
    ragged = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2], "data": [[1], [1, 2]]}]}
    with pytest.raises(InvalidInput):
        parse_request("m", "", httpx.Request("POST", "/", json=ragged).read(), None)
    for shape in ([-1, -1], [2**31], [1] * 9):  # gRPC FP32 shapes arrive as plain integers
        with pytest.raises(InvalidInput, match="non-negative integers"):
            wire.decode_numeric(b"", "FP32", shape)
