"""The web page at /ui, driven in a real browser: Playwright with Debian's Chromium, headless."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import LEARNED, TOY, TOY_GATE, colour_image, encode, make_folder_dataset, stored_top1, train_to_criterion

from harness.server import Server
from harness.variants import discard, variant
from training import load_config

pytestmark = pytest.mark.slow
TOKEN = "ui-admin-token"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    data = root / "data"
    make_folder_dataset(data / "colours", per_class=16)
    cfg = load_config(dotted=[f"data.source={data / 'colours'}", f"output_dir={root / 'runs'}", "name=ui-demo",
                              *TOY, *LEARNED])  # fmt: skip
    v1 = train_to_criterion(cfg).tag
    env = dict(IMGCLF_MODEL_NAME="ui-demo", IMGCLF_ADMIN_TOKEN=TOKEN, IMGCLF_RUNTIME="torch", **TOY_GATE,
               IMGCLF_REGISTRY_POLL_SECONDS="1", IMGCLF_DATA_ROOTS=f'["{data}"]',
               IMGCLF_FEEDBACK_DIR=str(data / "feedback"), IMGCLF_JOBS_DIR=str(root / "jobs"),
               IMGCLF_DATABASE_URL=f"sqlite:///{root / 'registry.db'}", IMGCLF_CAPTURE='["random"]',
               IMGCLF_CAPTURE_SAMPLE="1", IMGCLF_CAPTURE_DIR=str(root / "capture"))  # fmt: skip
    server = Server(env, root / "serve.log").start()
    images = root / "images"
    images.mkdir()
    (images / "red.png").write_bytes(encode(colour_image((220, 40, 40), 64, seed=3)))
    (images / "blue.jpg").write_bytes(encode(colour_image((40, 60, 220), 64, seed=4), "JPEG"))
    (images / "notes.png").write_bytes(b"these are not pixels")
    yield server, v1, images
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail("Chromium is not installed (make setup installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-background-networking"])  # fmt: skip
        yield b
        b.close()


def shot(page, tmp_path: Path, name: str) -> None:
    """A screenshot per screen; with IMGCLF_DOCS_DIR set they are the README's pictures."""
    out = Path(os.environ.get("IMGCLF_DOCS_DIR", tmp_path))
    page.screenshot(path=str(out / name), full_page=True)


def test_try_it_model_card_and_operations(site, browser, tmp_path):
    server, v1, images = site
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests_out: list[str] = []
    page.on("request", lambda r: requests_out.append(r.url))
    page.goto(server.base + "/ui")
    page.wait_for_selector("#served:has-text('serving ui-demo:')")

    # try it: two images and a non-image; bars, latency and version; the service's own error text
    page.set_input_files("#files", [str(images / "red.png"), str(images / "blue.jpg"), str(images / "notes.png")])
    page.wait_for_selector(".result:has(.bars) >> nth=1")
    page.wait_for_selector(".result .error")
    results = page.locator(".result")
    assert results.count() == 3
    red = page.locator(".result", has_text="red.png")  # the page shows what the stored model itself answers
    expected = stored_top1(v1, (images / "red.png").read_bytes())
    assert red.locator(".bars li").first.locator(".label").inner_text() == expected
    assert "ms · " + v1 in red.inner_text()
    assert "not a recognised image" in page.locator(".result", has_text="notes.png").locator(".error").inner_text()
    shot(page, tmp_path, "ui-try.png")

    # model card with the report's pictures
    page.click("#tab-card")
    page.wait_for_selector("#card-body h2:has-text('ui-demo:')")
    assert "Dataset fingerprint" in page.inner_text("#card-body")
    page.wait_for_function("[...document.querySelectorAll('#card-body figure img')].every(i => i.naturalWidth > 0)")
    assert page.locator("#card-body figure img").count() == 4  # curves, confusion matrix, samples, calibration
    shot(page, tmp_path, "ui-model-card.png")

    # operations: token kept in the tab's session storage; a retrain runs, is judged and promoted
    page.click("#tab-ops")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#ops-body:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('imgclf-token')") == TOKEN
    page.fill("#rt-data", "colours")
    page.fill("#rt-epochs", "40")  # a cap: the champion's config trains to its criterion
    page.click("#retrain-form button")
    page.wait_for_selector("#retrain-state:has-text('started')")
    page.wait_for_selector(".job .badge.succeeded", timeout=180_000)
    job = page.locator(".job").first
    assert "promoted:" in job.inner_text() and "challenger" in job.inner_text()
    page.wait_for_selector("#served:not(:has-text('" + v1 + "'))", timeout=30_000)  # the page follows the champion
    shot(page, tmp_path, "ui-operations.png")

    # roll back: v1 serves again, the history says so
    page.click("#rollback")
    page.wait_for_selector("#history li:first-child .badge.rollback")
    page.wait_for_selector(f"#served:has-text('{v1}')", timeout=30_000)

    # "this prediction is wrong": the correct label goes to /feedback
    page.click("#tab-try")
    page.locator(".result", has_text="red.png").get_by_role("button", name="This prediction is wrong").click()
    page.select_option(".result:has-text('red.png') select", "green")
    page.locator(".result", has_text="red.png").get_by_role("button", name="Send the correct label").click()
    page.wait_for_selector(".result:has-text('red.png') .feedback:has-text('kept as green')")
    page.click("#tab-ops")
    page.wait_for_selector("#feedback-counts:has-text('green: 1')")

    assert all(u.startswith(server.base) or u.startswith(("blob:", "data:")) for u in requests_out), "offline page"


def test_a_rollout_in_the_operations_tab(site, browser, tmp_path):
    """A version's Roll out button starts shadow -> canary on the default plan; the guards show as waiting for
    evidence; Abort ends it and the decision history says so."""
    server, v1, _ = site
    challenger = variant(httpx.get(server.base + "/model").json()["tag"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server.base + "/ui")
    page.click("#tab-ops")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#ops-body:not([hidden])")
    page.locator("#versions tr", has_text=challenger).get_by_role("button", name="Roll out").click()
    page.wait_for_selector(f"#shadow-state:has-text('{challenger} in shadow')")
    page.wait_for_selector("#guards tbody tr:has-text('disagreement') .badge:has-text('waiting')", timeout=30_000)
    assert page.locator("#guards tbody tr").count() == 5
    assert "started" in page.inner_text("#rollout-history")
    shot(page, tmp_path, "ui-rollout.png")
    page.click("#rollout-abort")
    page.wait_for_selector("#shadow-state:has-text('no rollout')")
    recent = httpx.get(server.base + "/rollout", headers={"Authorization": f"Bearer {TOKEN}"}).json()["recent"][0]
    assert recent["status"] == "aborted" and "by an operator in shadow" in recent["history"][-1]["reason"]
    discard(challenger)


def test_bad_token_is_worded_by_the_service(site, browser):
    server, _, _ = site
    page = browser.new_page()
    page.goto(server.base + "/ui")
    page.click("#tab-ops")
    page.fill("#token", "wrong")
    page.click("#token-form button")
    page.wait_for_selector("#token-state:has-text('the admin token is not valid')")
    assert page.locator("#ops-body").is_hidden()


def test_labelling_queue_by_keyboard(site, browser, tmp_path):
    """Captured images (every one here: IMGCLF_CAPTURE=random) are labelled with one key each; a label
    becomes feedback."""
    server, _, _ = site
    admin = {"Authorization": f"Bearer {TOKEN}"}
    for seed in (21, 22):
        image = encode(colour_image((128, 100 + seed, 90), 32, seed=seed))
        assert httpx.post(server.base + "/classify", files={"image": ("x.png", image)}).status_code == 200
    before = httpx.get(server.base + "/captures", headers=admin).json()
    feedback_before = sum(httpx.get(server.base + "/models", headers=admin).json()["feedback"].values())
    assert before["counts"]["pending"] >= 2
    page = browser.new_page()
    page.goto(server.base + "/ui")
    page.click("#tab-label")
    page.wait_for_selector("#label-state:has-text('admin token')")
    page.click("#tab-ops")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#token-state:has-text('signed in')")
    page.click("#tab-label")
    page.wait_for_selector("#label-caption:has-text('answered')")
    page.wait_for_function("document.querySelector('#label-image').naturalWidth > 0")  # fetched with the token
    first = before["items"][0]
    assert (
        first["sha256"] in page.evaluate("queue.current.sha256") and page.locator("#label-choices button").count() == 3
    )
    shot(page, tmp_path, "ui-label.png")
    page.keyboard.press("1")
    page.wait_for_selector(f"#label-last:has-text('labelled {before['classes'][0]}')")
    page.keyboard.press("s")
    page.wait_for_selector("#label-last:has-text('skipped')")
    after = httpx.get(server.base + "/captures", headers=admin).json()["counts"]
    assert after["labelled"] == before["counts"].get("labelled", 0) + 1
    assert after["skipped"] == before["counts"].get("skipped", 0) + 1
    assert sum(httpx.get(server.base + "/models", headers=admin).json()["feedback"].values()) >= feedback_before
    assert httpx.get(server.base + "/captures").status_code in (401, 403)  # the queue needs the token


def test_phone_sized_and_keyboard(site, browser, tmp_path):
    server, _, images = site
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
    page.goto(server.base + "/ui")
    page.wait_for_selector("#served:has-text('serving')")
    page.set_input_files("#files", [str(images / "red.png")])
    page.wait_for_selector(".result .bars")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "no sideways scrolling"
    shot(page, tmp_path, "ui-phone.png")

    # keyboard: the tabs and the image picker are reachable and work without a mouse
    page.goto(server.base + "/ui")
    focused = []
    for _ in range(5):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert {"tab-try", "tab-card", "tab-ops", "drop"} <= set(focused)
    page.focus("#tab-card")
    page.keyboard.press("Enter")
    page.wait_for_selector("#card:not([hidden])")
    page.focus("#tab-try")
    page.keyboard.press("Enter")
    page.wait_for_selector("#try:not([hidden])")
    with page.expect_file_chooser() as chooser:
        page.focus("#drop")
        page.keyboard.press("Enter")
    chooser.value.set_files(str(images / "blue.jpg"))
    page.wait_for_selector(".result:has-text('blue.jpg') .bars")


def test_chromium_is_the_debian_one():
    assert shutil.which("chromium") == CHROMIUM or Path(CHROMIUM).is_file()
