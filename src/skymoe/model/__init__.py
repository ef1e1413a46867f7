"""The SkyMoE model: config, vision towers, projectors, router, experts and the HF model class.

Importing this package registers ``skymoe`` with transformers' Auto classes.
"""
from skymoe.model.configuration import EfficientNetLiteConfig, SkyMoEConfig
from skymoe.model.geoembed import GeoEmbedConfig
from skymoe.model.modeling import SkyMoEForConditionalGeneration, register_auto_classes
from skymoe.model.outputs import SkyMoEOutput

register_auto_classes()

__all__ = ["EfficientNetLiteConfig", "GeoEmbedConfig", "SkyMoEConfig", "SkyMoEForConditionalGeneration", "SkyMoEOutput"]
