"""Promises of the layout: the predictor is framework-free, the dependency lists agree, and benchmarks and
load tests share the harness instead of importing each other."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_predictor_loads_no_framework():
    frameworks = ("bentoml", "fastapi", "starlette", "matplotlib")
    code = (
        "import sys, service.inference, service.inference.selection, service.inference.answers\n"
        f"print(','.join(m for m in {frameworks!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing service.inference loaded {out.stdout.strip()}"


def test_the_image_dependency_lists_are_pyproject_s():
    """bentofile.yaml and the GPU image's requirements list pyproject.toml's dependencies (bentoml aside: the
    image brings its own)."""
    deps = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if not d.startswith("bentoml")]  # fmt: skip
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    gpu = [line.strip() for line in (ROOT / "k8s/overlays/gpu/requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]  # fmt: skip
    assert bentofile == deps, "bentofile.yaml's python.packages differ from pyproject.toml's dependencies"
    assert gpu == deps, "k8s/overlays/gpu/requirements.txt differs from pyproject.toml's dependencies"


def imported_packages(folder: Path) -> set[str]:
    names = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_benchmarks_and_load_tests_share_the_harness_not_each_other():
    assert "loadtests" not in imported_packages(ROOT / "benchmarks")
    assert "benchmarks" not in imported_packages(ROOT / "loadtests")
    assert "harness" in imported_packages(ROOT / "benchmarks") and "harness" in imported_packages(ROOT / "loadtests")
