"""GeoEmbed V3 in PyTorch (``vision: geoembed-v3``) against the geoembed package's own output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skymoe.model.geoembed import GeoEmbedConfig, GeoEmbedTower

REFERENCE = Path(__file__).parent / "data" / "geoembed_v3_reference.npz"


@pytest.fixture(scope="module")
def weights(asset_or_skip) -> Path:
    return asset_or_skip("geoembed-v3") / "weights" / "v3.npz"


@pytest.fixture(scope="module")
def tower(weights) -> GeoEmbedTower:
    tower = GeoEmbedTower(GeoEmbedConfig()).eval()
    tower.load_pretrained(str(weights))
    return tower


def test_port_matches_the_package_to_1e_5(tower, asset_or_skip):
    """benchmarks/geoembed_reference.py wrote the package's (netcl, numpy backend) embeddings of four NEON crops."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from geoembed_reference import tiles

    reference = np.load(REFERENCE)
    x = torch.from_numpy(tiles(asset_or_skip("neon_trees")))
    with torch.no_grad():
        ours = tower.embed(x).numpy()
    assert ours.shape == (4, 256)
    assert np.abs(ours - reference["embeddings"]).max() < 1e-5
    assert not np.allclose(ours[0], ours[1], atol=1e-2)  # different tiles, different vectors


def test_tower_yields_a_token_per_32_px(tower):
    assert sum(p.numel() for p in tower.parameters()) == 13_266_240  # the archive's 13.3 M parameters (BN statistics aside)
    with torch.no_grad():
        tokens = tower(torch.zeros(2, 3, 128, 128))
    assert tokens.shape == (2, 16, 512) and tower.hidden_size == 512
    with torch.no_grad():
        assert tower(torch.zeros(1, 3, 224, 224)).shape == (1, 49, 512)


def test_wrong_archive_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", **{"fc.weight": np.zeros((8192, 256), np.float32)})
    with pytest.raises(ValueError, match=r"bad.npz: not GeoEmbed V3 weights: lacks \['bb.layer1.0.bn1.bias'"):
        GeoEmbedTower(GeoEmbedConfig()).load_pretrained(str(tmp_path / "bad.npz"))


def test_vision_geoembed_v3_trains_and_reloads(tmp_path, weights):
    """``vision: geoembed-v3`` in a YAML config: a stage-1 model on the real weights, saved and loaded back."""
    from _toy_data import write_config, write_toy_dataset

    from skymoe.train.config import load_config
    from skymoe.model import SkyMoEForConditionalGeneration
    from skymoe.train import train

    data = write_toy_dataset(tmp_path / "toy", n=8)
    overrides = ["model.vision.pretrained=geoembed-v3", "model.image_size=128", "max_steps=2", "checkpoint_every=2"]
    result = train(load_config(write_config(tmp_path / "c.yaml", data), overrides), tmp_path / "run")
    model = SkyMoEForConditionalGeneration.from_pretrained(result.model_dir)
    assert isinstance(model.vision_tower, GeoEmbedTower) and model.config.num_image_tokens == 16
    assert model.config.image_mean == [0.5, 0.5, 0.5]  # the package's [-1, 1] scaling
    stem = torch.from_numpy(np.load(weights)["bb.stem.0.weight"])
    assert torch.equal(model.vision_tower.stem[0].weight, stem)  # frozen: still the archive's
