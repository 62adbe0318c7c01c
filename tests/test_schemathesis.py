"""Schemathesis against the service's own OpenAPI document, on a real server: no server errors, and every
response matches the schema it is documented with. Admin routes answer 401 (no token is sent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.server import Server

pytestmark = pytest.mark.slow


def test_openapi_fuzzing_finds_no_server_error(trained_model, tmp_path):
    tag, _ = trained_model
    env = dict(IMGCLF_MODEL_NAME=tag.split(":")[0], IMGCLF_MODEL_TAG=tag, IMGCLF_RUNTIME="torch",
               IMGCLF_ADMIN_TOKEN="not-sent", IMGCLF_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}")  # fmt: skip
    server = Server(env, tmp_path / "serve.log").start()
    try:
        schema = tmp_path / "openapi.json"
        schema.write_text(httpx.get(server.base + "/openapi.json").text)
        st = shutil.which("schemathesis", path=str(Path(__import__("sys").executable).parent))
        cmd = [st, "run", str(schema), "--url", server.base, "--checks",
               "not_a_server_error,response_schema_conformance", "--max-examples", "25",
               "--workers", "1", "--request-timeout", "30", "--generation-deterministic",
               "--suppress-health-check", "all"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-5000:]
        assert httpx.get(server.base + "/readyz").status_code == 200
    finally:
        server.stop()
