"""The HTTP edge through the ASGI app (no server process): every endpoint and every bad input."""

import base64
import io

import pytest
from conftest import COLOURS, colour_image, encode, loaded_worker
from fastapi.testclient import TestClient
from PIL import Image

from service.edge.app import create_app
from service.serving import build_worker
from service.settings import Settings


@pytest.fixture(scope="module")
def client(trained_model):
    settings, worker = loaded_worker(trained_model)
    with TestClient(create_app(settings, lambda: worker.path)) as c:
        yield c


RED = encode(colour_image(COLOURS["red"], 48, seed=77))


def test_classify_multipart(client):
    r = client.post("/classify", files={"image": ("red.png", RED, "image/png")}, params={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"].startswith("colours-served:")
    preds = body["predictions"]
    assert len(preds) == 2 and preds[0]["score"] >= preds[1]["score"]
    assert {p["label"] for p in preds} <= {"red", "green", "blue"}


def test_classify_raw_body_and_top_k_capped(client):
    r = client.post("/classify", content=RED, headers={"Content-Type": "image/png"}, params={"top_k": 50})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_classify_top_k_as_a_form_field(client):
    r = client.post("/classify", files={"image": ("r.png", RED, "image/png")}, data={"top_k": "1"})
    assert len(r.json()["predictions"]) == 1


def test_batch_and_json_give_one_result_per_image_in_order(client):
    imgs = [encode(colour_image(rgb, 40, seed=5)) for rgb in COLOURS.values()]
    r = client.post("/classify_batch", files=[("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(imgs)])
    assert r.status_code == 200
    batch = r.json()["results"]
    assert [x["index"] for x in batch] == [0, 1, 2]
    r = client.post("/classify_json", json={"images": [base64.b64encode(d).decode() for d in imgs], "top_k": 3})
    assert r.status_code == 200
    assert [x["predictions"] for x in r.json()["results"]] == [x["predictions"] for x in batch]


def test_batch_with_one_bad_image_reports_it_alone(client):
    r = client.post("/classify_batch", files=[("images", ("a.png", RED, "image/png")),
                                              ("images", ("b.txt", b"not an image", "image/png"))])  # fmt: skip
    assert r.status_code == 200
    a, b = r.json()["results"]
    assert a["predictions"] and b["predictions"] is None and "not a recognised image" in b["error"]


def test_model_info(client):
    info = client.get("/model").json()
    assert info["classes"] == ["blue", "green", "red"]
    assert info["preprocessing"]["input_size"] == 32
    assert "accuracy" in info["metrics"]["test"]
    assert info["runtime"]["chosen"] == "torch"
    serving = info["serving"]  # the server's workers and threads, and how they were chosen
    assert serving["workers"] >= 1 and serving["threads"] >= 1 and serving["cores"] >= 1
    assert serving["decode_threads"] >= 2 and "workers:" in serving["chosen"]


def _bomb() -> bytes:
    return encode(Image.new("L", (3000, 3000)), "PNG")  # small file, 9 Mpx > the 4 Mpx limit


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty"),
        ({"files": {"image": ("x.txt", b"hello world", "image/jpeg")}}, 415, "accepted formats"),
        ({"files": {"image": ("x.html", b"<html></html>", "image/jpeg")}}, 415, "not a recognised image"),
        ({"files": {"image": ("x.png", RED[: len(RED) // 2], "image/png")}}, 400, "truncated"),
        ({"files": {"image": ("x.png", _bomb(), "image/png")}}, 413, "maximum is 4000000 pixels"),
        ({"files": {"picture": ("x.png", RED, "image/png")}}, 400, "found fields: picture"),
        ({"data": {"image": "https://example.com/cat.jpg"}}, 400, "URLs are never fetched"),
        ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "classify_json"),
        ({"content": b"x" * 300_000, "headers": {"Content-Type": "image/png"}}, 413, "maximum is 200000 bytes"),
        ({"files": {"image": ("x.ico", encode(Image.new("RGB", (16, 16)), "ICO"), "image/x-icon")}}, 415, "ICO"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_clear_4xx(client, kwargs, status, needle):
    r = client.post("/classify", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "100000"])
def test_bad_top_k_is_a_422(client, top_k):
    r = client.post("/classify", files={"image": ("r.png", RED, "image/png")}, params={"top_k": top_k})
    assert r.status_code == 422


def test_batch_limits(client):
    r = client.post("/classify_batch", files=[("images", (f"{i}.png", RED, "image/png")) for i in range(5)])
    assert r.status_code in (400, 413) and "maximum is 4" in r.text
    r = client.post("/classify_batch", files=[("pictures", ("a.png", RED, "image/png"))])
    assert r.status_code == 400 and "'images'" in r.json()["error"]


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"images": ["!!!not base64!!!"]}, 400, "not valid base64"),
        ({"images": ["http://10.0.0.1/x.png"]}, 400, "never fetched"),
        ({"images": [base64.b64encode(b"text").decode()]}, 415, "not a recognised image"),
        ({"images": []}, 422, None),
        ({"images": ["a"], "top_k": "many"}, 422, None),
        ({"images": ["a"], "surprise": 1}, 422, None),
    ],
)
def test_json_errors(client, payload, status, needle):
    r = client.post("/classify_json", json=payload)
    assert r.status_code == status, r.text
    if needle:
        assert needle in r.json()["error"]


def test_malformed_json_is_a_4xx(client):
    r = client.post("/classify_json", content=b'{"images": [', headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500


def test_image_modes_and_formats_classify(client):
    base = colour_image(COLOURS["green"], 40, seed=3)
    variants = [
        encode(base.convert("RGBA")),
        encode(base.convert("P")),
        encode(base.convert("L")),
        encode(base.convert("CMYK"), "JPEG"),
        encode(base, "WEBP"),
        encode(base, "BMP"),
        encode(base, "TIFF"),
    ]
    buf = io.BytesIO()
    base.save(buf, "GIF", save_all=True, append_images=[base.rotate(90)])
    variants.append(buf.getvalue())
    for data in variants:
        r = client.post("/classify", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text


def test_openapi_documents_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/classify", "/classify_batch", "/classify_json", "/model"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/classify"]["post"]["requestBody"]["content"]


def test_web_page_script_parses():
    """The page's script is plain JavaScript; a syntax error would leave the page blank."""
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the browser test (tests/test_ui.py) covers the page")
    script = Path(__file__).resolve().parents[1] / "service" / "edge" / "ui" / "app.js"
    subprocess.run([node, "--check", str(script)], check=True, capture_output=True)


@pytest.mark.parametrize("top_k", ["²", "٣", "1e3", "0x10", "9" * 30])
def test_a_form_top_k_in_other_digits_is_a_400_not_a_crash(client, top_k):
    from conftest import colour_image, encode

    r = client.post("/classify", files={"image": ("x.png", encode(colour_image((1, 2, 3))))}, data={"top_k": top_k})
    assert r.status_code == 400 and r.json()["reason"] == "bad_top_k", r.text


def test_an_abstain_threshold_marks_unsure_answers_and_still_lists_them(trained_model):
    import numpy as np

    from service.inference.answers import ClassifyQuery, answer
    from training.tasks import TaskSpec

    spec = TaskSpec("multiclass", ["a", "b"])
    unsure = answer(spec, np.array([0.55, 0.45]), ClassifyQuery(2), abstain_below=0.6)
    assert unsure.verdict.abstained is True and [p["label"] for p in unsure.predictions] == ["a", "b"]
    assert answer(spec, np.array([0.55, 0.45]), ClassifyQuery(1), abstain_below=0.5).verdict.abstained is False
    assert answer(spec, np.array([0.55, 0.45]), ClassifyQuery(1)).verdict.abstained is None

    tag, _ = trained_model
    settings = Settings(model_name=tag.split(":")[0], runtime="torch", abstain_below=0.5)
    worker = build_worker(settings)
    worker.follower.load()
    with TestClient(create_app(settings, lambda: worker.path)) as c:
        body = c.post("/classify", files={"image": ("red.png", RED, "image/png")}).json()
    assert body["abstained"] == (body["predictions"][0]["score"] < 0.5)


def test_without_an_abstain_threshold_the_answer_has_no_abstained_field(client):
    assert "abstained" not in client.post("/classify", files={"image": ("red.png", RED, "image/png")}).json()
