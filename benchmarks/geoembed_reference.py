"""The GeoEmbed V3 package's own embeddings of four real tiles: the reference ``tests/test_geoembed.py`` checks our port against.

The package (geoembed 1.1.2) computes with netcl, whose CPU backend is numpy (pyopencl is imported
at module load but never used on the CPU, so a stand-in module satisfies the import). Its
encoder (``arch.py``, ``load_v3_netcl``) and weights come from the ``geoembed-v3`` asset; netcl
itself is not an asset, so download it by hand:

    pip download --no-deps netcl==0.4.4 -d /tmp/netcl && unzip -q /tmp/netcl/netcl-0.4.4-*.whl -d /tmp/netcl/src
    python benchmarks/geoembed_reference.py --netcl /tmp/netcl/src

Inputs: four 128x128 crops of the NEON scenes (``neon_trees`` asset), scaled to [-1, 1] as the
package's ``preprocess`` does. Writes ``tests/data/geoembed_v3_reference.npz`` (inputs' crop
boxes and the [4, 256] embeddings).
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np

# (scene, x, y) of each 128 px crop
CROPS = (("OSBS_029.tif", 0, 0), ("OSBS_029.tif", 200, 150), ("SOAP_061.png", 100, 260), ("2019_YELL_2_541000_4977000_image_crop.png", 600, 400))
SIZE = 128
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "geoembed_v3_reference.npz"


def tiles(neon: Path) -> np.ndarray:
    """[4, 3, 128, 128] float32 in [-1, 1]: the package's preprocess of each crop (no resize: already 128 px)."""
    from PIL import Image

    out = []
    for scene, x, y in CROPS:
        with Image.open(neon / scene) as im:
            crop = im.convert("RGB").crop((x, y, x + SIZE, y + SIZE))
        out.append(((np.asarray(crop, dtype=np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def package_embeddings(netcl: Path, geoembed: Path, x: np.ndarray) -> np.ndarray:
    stub = types.ModuleType("pyopencl")
    stub.__getattr__ = lambda name: mock.MagicMock()  # only the OpenCL backend touches it
    sys.modules.setdefault("pyopencl", stub)
    sys.path[:0] = [str(netcl), str(geoembed)]
    from arch import load_v3_netcl  # geoembed/arch.py, as shipped
    from netcl.core.device import manager

    model = load_v3_netcl(str(geoembed / "weights" / "v3.npz"), queue=manager.default("cpu").queue)
    return model.forward(x)


def main() -> None:
    from skymoe.assets import get_asset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netcl", type=Path, required=True, help="folder holding the unpacked netcl 0.4.4 package")
    args = parser.parse_args()
    x = tiles(get_asset("neon_trees"))
    embeddings = package_embeddings(args.netcl, get_asset("geoembed-v3"), x).astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, embeddings=embeddings, crops=np.array([[x, y] for _, x, y in CROPS]), scenes=np.array([s for s, _, _ in CROPS]))
    print(f"wrote {OUT}: {embeddings.shape}, norms {np.linalg.norm(embeddings, axis=1).round(6).tolist()}")


if __name__ == "__main__":
    main()
