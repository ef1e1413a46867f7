"""scripts/gpu_check.sh --dry-run: every part of the one-GPU check runs on CPU at tiny sizes and lands in its report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_dry_run_writes_every_part(tmp_path):
    done = subprocess.run([str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "gpu.md")],
                          env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    assert report.startswith("# One-GPU check") and "DRY RUN on CPU" in report
    for heading in ("## Stage-2 training steps, bf16 autocast", "## MoE layer benchmark", "## Greedy generation",
                    "## Sharded training on the one device", "### FSDP2 (`configs/accelerate/fsdp_cpu.yaml`"):
        assert heading in report
    assert "| tiny | grouped_mm |" in report and "| tiny | expert loop |" in report
    assert "| transformers Mixtral block (grouped_mm) |" in report and "bf16 on cpu" in report
    for stage in (1, 2):  # both stages trained and wrote FSDP's sharded state
        line = next(l for l in report.splitlines() if l.startswith(f"* stage {stage}: 4 steps"))
        assert "pytorch_model_fsdp_0" in line and "optimizer_0" in line
    assert report.rstrip().endswith("Every part ran.")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_real_run_refuses_and_points_to_the_dry_run(tmp_path):
    done = subprocess.run([str(SCRIPT), "--work", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
