"""The machine line every inference benchmark writes into its results file."""
from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """CPU model (lscpu), core count, torch and transformers versions and the load average when measuring."""
    import torch
    import transformers

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("Model name")), platform.processor())
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or platform.machine()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{model}; {os.cpu_count()} CPUs (shared with other jobs; load average {load}); torch {torch.__version__}, transformers {transformers.__version__}"
