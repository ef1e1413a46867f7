"""The frozen tower's feature cache: hits are exact, anything that changes features is a miss, bad entries are
recomputed, the disk stays bounded, and cached features give the model exactly what its tower gives."""
import logging

import numpy as np
import pytest
import torch
from _model_helpers import make_batch, tiny_model
from PIL import Image

from skymoe.data.feature_cache import (
    FeatureCache,
    PixelSource,
    Produced,
    ViewRequest,
    file_digest,
    image_request,
)
from skymoe.data.imagery import load_image
from skymoe.data.processor import SkyMoEProcessor
from skymoe.data.tokenizer import build_tokenizer
from skymoe.model.feature_source import feature_source, tower_fingerprint


class CountingEncoder:
    """A stand-in tower: features are a function of the pixels; counts the images it encodes."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images) -> torch.Tensor:
        self.calls += len(images)
        return torch.stack([torch.from_numpy(np.asarray(img.resize((2, 2)), dtype=np.float32).reshape(4, 3)) for img in images])


def write_png(path, color) -> str:
    Image.new("RGB", (8, 8), color).save(path)
    return str(path)


def test_hit_is_exact_and_does_not_encode_again(tmp_path):
    encoder = CountingEncoder()
    cache = FeatureCache(encoder, "ns", tmp_path)
    image = write_png(tmp_path / "a.png", (10, 20, 30))
    first = cache.get([image_request(image, load_image)])[0].tensor
    again = cache.get([image_request(image, load_image)])[0].tensor
    from_disk = FeatureCache(encoder, "ns", tmp_path).get([image_request(image, load_image)])[0].tensor
    assert encoder.calls == 1
    assert torch.equal(first, again) and torch.equal(first, from_disk)
    assert first[0].tolist() == [10.0, 20.0, 30.0]


def test_changed_file_is_a_miss(tmp_path):
    encoder = CountingEncoder()
    cache = FeatureCache(encoder, "ns", tmp_path, memory_bytes=0)
    image = write_png(tmp_path / "a.png", (10, 20, 30))
    cache.get([image_request(image, load_image)])
    write_png(tmp_path / "a.png", (99, 20, 30))  # same path, new content
    features = cache.get([image_request(image, load_image)])[0].tensor
    assert encoder.calls == 2 and features[0, 0].item() == 99.0


def test_another_namespace_is_a_miss(tmp_path):
    encoder = CountingEncoder()
    image = write_png(tmp_path / "a.png", (1, 2, 3))
    FeatureCache(encoder, "tower-a", tmp_path).get([image_request(image, load_image)])
    FeatureCache(encoder, "tower-b", tmp_path).get([image_request(image, load_image)])
    assert encoder.calls == 2


def test_corrupt_entry_is_recomputed_with_one_warning(tmp_path, caplog):
    encoder = CountingEncoder()
    image = write_png(tmp_path / "a.png", (5, 6, 7))
    FeatureCache(encoder, "ns", tmp_path).get([image_request(image, load_image)])
    (entry,) = list((tmp_path / "ns").rglob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    cache = FeatureCache(encoder, "ns", tmp_path)
    with caplog.at_level(logging.WARNING, logger="skymoe.data.feature_cache"):
        features = cache.get([image_request(image, load_image)])[0].tensor
    warnings = [r for r in caplog.records if "unreadable entry" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0].getMessage()
    assert cache.stats["recomputed_corrupt"] == 1 and encoder.calls == 2
    assert features[0].tolist() == [5.0, 6.0, 7.0]
    assert torch.equal(FeatureCache(encoder, "ns", tmp_path).get([image_request(image, load_image)])[0].tensor, features)


def test_non_finite_entry_is_recomputed(tmp_path):
    from safetensors.torch import save_file

    encoder = CountingEncoder()
    image = write_png(tmp_path / "a.png", (5, 6, 7))
    cache = FeatureCache(encoder, "ns", tmp_path, memory_bytes=0)
    cache.get([image_request(image, load_image)])
    (entry,) = list((tmp_path / "ns").rglob("*.safetensors"))
    save_file({"features": torch.full((4, 3), float("nan"))}, str(entry))
    assert torch.isfinite(cache.get([image_request(image, load_image)])[0].tensor).all()
    assert cache.stats["recomputed_corrupt"] == 1


def test_disk_is_bounded(tmp_path):
    cache = FeatureCache(lambda images: torch.zeros(len(images), 64, 16), "ns", tmp_path, max_bytes=40_000, memory_bytes=0)
    requests = [ViewRequest(f"view-{i}|plain", lambda: Produced(None)) for i in range(40)]  # ~4.2 kB an entry
    for request in requests:
        cache.get([request])
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))
    assert on_disk == cache.disk_bytes() <= 40_000
    assert 5 < len(list(tmp_path.rglob("*.safetensors"))) < 10
    assert (tmp_path / "ns").exists() and cache._path(requests[-1].key).exists()  # the newest are kept


def test_file_digest_follows_content(tmp_path):
    path = write_png(tmp_path / "a.png", (1, 1, 1))
    before = file_digest(path)
    write_png(tmp_path / "a.png", (2, 1, 1))
    assert file_digest(path) != before


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(["a small test vocabulary"], vocab_size=128)


def test_fingerprint_sees_tower_size_and_normalisation(tokenizer):
    model = tiny_model()
    processor = SkyMoEProcessor(tokenizer, image_size=32, num_image_tokens=model.config.num_image_tokens)
    base = tower_fingerprint(model, processor)
    assert tower_fingerprint(model, SkyMoEProcessor(tokenizer, image_size=32, num_image_tokens=model.config.num_image_tokens,
                                                    max_length=50)) == base  # text settings do not shape features
    assert tower_fingerprint(model, SkyMoEProcessor(tokenizer, image_size=48)) != base
    assert tower_fingerprint(model, SkyMoEProcessor(tokenizer, image_size=32, image_mean=(0.5, 0.5, 0.5))) != base
    other = tiny_model(seed=1)
    assert tower_fingerprint(other, processor) != base
    with torch.no_grad():
        next(model.vision_tower.parameters()).add_(1e-3)
    assert tower_fingerprint(model, processor) != base


def test_cached_features_give_the_towers_logits(tmp_path, tokenizer):
    model = tiny_model().eval()
    processor = SkyMoEProcessor(tokenizer, image_size=32, num_image_tokens=model.config.num_image_tokens)
    paths = [write_png(tmp_path / f"{i}.png", (40 * i, 100, 200 - 30 * i)) for i in range(2)]
    source = feature_source(model, processor, root=tmp_path / "cache")
    assert isinstance(source, FeatureCache)
    features = torch.stack([e.tensor for e in source.get([image_request(p, load_image) for p in paths])])
    batch = make_batch(model.config)
    batch["pixel_values"] = processor.preprocess_images([load_image(p) for p in paths])
    with torch.no_grad():
        through_tower = model(**batch).logits
        batch["vision_features"] = features
        del batch["pixel_values"]
        from_cache = model(**batch).logits
    assert torch.equal(through_tower, from_cache)


def test_a_training_tower_or_cache_off_reads_pixels(tokenizer):
    processor = SkyMoEProcessor(tokenizer, image_size=32)
    assert isinstance(feature_source(tiny_model(), processor, cache=False), PixelSource)
    assert isinstance(feature_source(tiny_model(freeze_vision=False), processor), PixelSource)
