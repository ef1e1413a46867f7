"""GeoEmbed V3 (``vision: geoembed-v3``): the aerial self-supervised ResNet-18 of geoembed 1.1.2, in PyTorch.

The package runs its encoder on netcl (an OpenCL framework); its weights are a numpy archive
(``weights/v3.npz``, registry asset ``geoembed-v3``). The network, as ``geoembed/arch.py``
(``TileEncoderV3``) defines it: a CIFAR-style ResNet-18 (3x3 stem at stride 1, no max-pool;
BasicBlocks of 64-128-256-512 channels, eval-mode BatchNorm, eps 1e-5) on 128 px tiles scaled to
[-1, 1]; the 16x16 stride-8 map average-pooled to 4x4; that grid flattened channel-major
(8,192) into a linear layer of 256 and L2-normalised.

As a tower it yields the pooled grid as visual tokens: [B, (S/32)^2, 512], 16 tokens at 128 px
(the same grid as the demo's EfficientNet tokens). :meth:`GeoEmbedTower.embed` gives the
package's 256-d unit vector, which ``tests/test_geoembed.py`` checks against the package's
own output to 1e-5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedConfig

GEOEMBED_ASSET = "geoembed-v3"
GEOEMBED_WEIGHTS = "weights/v3.npz"
BN_EPS = 1e-5  # netcl's BatchNorm2d default, which the package's layers keep


class GeoEmbedConfig(PreTrainedConfig):
    """GeoEmbed V3 tower: ResNet-18 width ``base``, visual tokens of ``8 * base`` channels every ``patch_size`` px."""

    model_type = "skymoe_geoembed"

    base: int = 64
    embed_dim: int = 256
    pool_size: int = 4  # the package pools the 128 px tile's map to pool_size x pool_size
    patch_size: int = 32  # one token per 32x32 px: the stride-8 map pooled by 4


AutoConfig.register(GeoEmbedConfig.model_type, GeoEmbedConfig)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.short = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.short(x))


class GeoEmbedTower(nn.Module):
    def __init__(self, config: GeoEmbedConfig):
        super().__init__()
        base = config.base
        self.stem = _conv_bn(3, base, 3, 1)
        widths = [(base, base, 1), (base, 2 * base, 2), (2 * base, 4 * base, 2), (4 * base, 8 * base, 2)]
        self.layers = nn.ModuleList(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
                                    for cin, cout, stride in widths)
        self.pool = config.patch_size // 8  # stride-8 map cells a token averages
        self.fc = nn.Linear(8 * base * config.pool_size**2, config.embed_dim)
        self.patch_size = config.patch_size
        self.hidden_size = 8 * base

    def grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 512, S/32, S/32]: the pooled last-stage map."""
        x = F.relu(self.stem(pixel_values))
        for layer in self.layers:
            x = layer(x)
        return F.avg_pool2d(x, self.pool)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.grid(pixel_values).flatten(2).transpose(1, 2)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 256] unit vectors: the package's embedding (defined for its 128 px input: a 4x4 grid)."""
        return F.normalize(self.fc(self.grid(pixel_values).flatten(1)), dim=-1, eps=1e-8)

    def load_pretrained(self, source: str) -> None:
        """Weights from the package's ``v3.npz`` (a path, or the asset name ``geoembed-v3``)."""
        import numpy as np

        if source == GEOEMBED_ASSET:
            from skymoe.assets import get_asset

            source = str(get_asset(GEOEMBED_ASSET) / GEOEMBED_WEIGHTS)
        names = _npz_names(self)
        with np.load(source, allow_pickle=False) as data:
            missing = sorted(set(names.values()) - set(data.files))
            if missing:
                raise ValueError(f"{source}: not GeoEmbed V3 weights: lacks {missing[:3]} ({len(missing)} arrays)")
            state = {ours: torch.from_numpy(data[theirs]) for ours, theirs in names.items()}
        state["fc.weight"] = state["fc.weight"].T.contiguous()  # netcl's Linear stores [in, out]
        self.load_state_dict(state, strict=False)  # strict=False: BatchNorm's num_batches_tracked is not in the archive


def _npz_names(tower: GeoEmbedTower) -> dict[str, str]:
    """Our state-dict name -> the archive's (the package's PyTorch training names: bb.stem.0, bb.layer1.0.bn1, ...)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    names = {"stem.0.weight": "bb.stem.0.weight", **{f"stem.1.{k}": f"bb.stem.1.{k}" for k in bn},
             "fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    for s, layer in enumerate(tower.layers):
        for b, block in enumerate(layer):
            ours, theirs = f"layers.{s}.{b}", f"bb.layer{s + 1}.{b}"
            for i in (1, 2):
                names[f"{ours}.conv{i}.0.weight"] = f"{theirs}.conv{i}.weight"
                names.update({f"{ours}.conv{i}.1.{k}": f"{theirs}.bn{i}.{k}" for k in bn})
            if not isinstance(block.short, nn.Identity):
                names[f"{ours}.short.0.weight"] = f"{theirs}.short.0.weight"
                names.update({f"{ours}.short.1.{k}": f"{theirs}.short.1.{k}" for k in bn})
    return names
