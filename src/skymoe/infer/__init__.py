"""Inference: the task Pipeline and large-scene (GeoTIFF) processing."""
from skymoe.infer.pipeline import Answer, Pipeline

__all__ = ["Answer", "Pipeline"]
