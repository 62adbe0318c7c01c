"""make gpu-check's measuring script, run here through every step on the CPU at toy sizes so it is ready for a GPU."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_the_gpu_check_runs_every_step_and_prints_one_table(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--dry-run", "--seconds", "0.05", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    parts = {r["part"] for r in rows}
    assert parts == {"serving: model", "decode + preprocess", "decode + model", "training"}
    assert all(r["img_per_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert printed.count("\n| ") == len(rows) + 2  # the header, its rule and one line a row


def test_without_a_gpu_it_says_so_instead_of_measuring_the_cpu(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out
