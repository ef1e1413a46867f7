"""Where a batch's visual input comes from: the frozen tower's cached features, or pixels.

:func:`feature_source` binds :class:`skymoe.data.feature_cache.FeatureCache` to a
model's frozen tower and its processor (the cache's namespace is their
fingerprint), or returns a :class:`~skymoe.data.feature_cache.PixelSource` when
the tower trains or caching is off.
"""
from __future__ import annotations

import copy
import hashlib
import json

import torch

from skymoe.data.feature_cache import FeatureCache, PixelSource
from skymoe.model.vision import without_autocast

CACHE_FORMAT = 1  # bump when what a tower's features are changes without the fingerprint seeing it


def tower_fingerprint(model, processor) -> str:
    """SHA-1 (20 hex) of what the tower's output depends on: its config, layer, weights, input size, normalisation."""
    h = hashlib.sha1()
    settings = {
        "format": CACHE_FORMAT,
        "tower": type(model.vision_tower).__name__,
        "vision_config": model.config.vision_config.to_dict(),
        "feature_layer": model.config.vision_feature_layer,
        # the settings no tower output depends on, as None (the zoom's are left out: earlier caches stay valid)
        "image": {k: v for k, v in processor.to_dict().items() if k not in ("zoom", "zoom_size")}
        | {"max_length": None, "num_route_tokens": None, "blind": None},
        "dtype": str(model.dtype),
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.vision_tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def feature_source(model, processor, *, cache: bool = True, device=None, **cache_kwargs):
    """A FeatureCache over the model's frozen tower (a private frozen copy, so that wrapping or sharding the
    model for training never touches it), or a PixelSource when the tower trains (``freeze_vision: false``)
    or ``cache`` is False."""
    if not (cache and model.config.freeze_vision):  # a loaded model's parameters all require grad: the config decides
        return PixelSource(processor.preprocess_images)
    tower = copy.deepcopy(model.vision_tower).eval().requires_grad_(False)
    device = torch.device(device if device is not None else next(model.parameters()).device)
    tower.to(device)
    dtype = model.dtype

    def encode(images, size: int | None = None) -> torch.Tensor:
        pixels = processor.preprocess_images(images, size).to(device, dtype)
        with torch.no_grad(), without_autocast(device.type):  # as the model's read_tower reads a frozen tower
            return tower(pixels)

    return FeatureCache(encode, tower_fingerprint(model, processor), **cache_kwargs)
