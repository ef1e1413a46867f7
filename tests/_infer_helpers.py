"""Tiny saved SkyMoE models and small GeoTIFFs for the inference, scene, server and UI tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TRAINING_TEXT = [
    "Describe this image. An aerial view of a farmland with three buildings and a red vehicle.",
    "Where is the storage tank? Answer with a box. [12, 40, 57, 88]; [1, 2, 3, 4]",
    "How many buildings are there in the image? 0 1 2 3 4 5 6 7 8 9",
    "What type of scene is this? forest river residential harbour airport",
]


def save_tiny_model(directory: Path, num_experts: int = 4, seed: int = 0, **moe) -> Path:
    """A randomly initialised tiny SkyMoE (router + LoRA experts, or the ``moe`` settings given) + processor
    saved to ``directory``."""
    import torch

    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer, special_token_ids
    from skymoe.model.build import build_model, tiny_config

    tokenizer = build_tokenizer(TRAINING_TEXT * 4, vocab_size=300)
    config = tiny_config(vocab_size=len(tokenizer), special_ids=special_token_ids(tokenizer), moe={"num_experts": num_experts, "top_k": min(2, num_experts), **moe})
    torch.manual_seed(seed)
    model = build_model(config, tokenizer=tokenizer)
    model.save_pretrained(directory)
    SkyMoEProcessor.from_model_config(model.config, tokenizer).save_pretrained(directory)
    return directory


def write_geotiff(path: Path, width: int, height: int, bands: int = 3, georeferenced: bool = True, dtype="uint8", seed: int = 0) -> Path:
    """A random GeoTIFF; georeferenced ones are in EPSG:32613 (UTM 13N) at 10 m pixels."""
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255 if dtype == "uint8" else 4000, size=(bands, height, width)).astype(dtype)
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=dtype)
    if georeferenced:
        profile.update(crs="EPSG:32613", transform=Affine(10.0, 0.0, 450000.0, 0.0, -10.0, 4450000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def script_answers(pipeline, text: str) -> None:
    """Make ``pipeline``'s model "generate" ``text`` for every prompt (the real processor decodes it).

    A randomly initialised tiny model writes no parsable boxes; this lets box handling be checked end to end.
    """
    import torch

    ids = pipeline.processor.tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [pipeline.processor.ids["eos"]]

    def generate(input_ids, max_new_tokens=None, output_routing=False, **kwargs):
        from skymoe.model.outputs import SkyMoEGenerateOutput

        sequences = torch.cat([input_ids, torch.tensor([ids] * input_ids.shape[0])], dim=1)
        return SkyMoEGenerateOutput(sequences=sequences) if output_routing else sequences  # no prefill: no routing

    pipeline.model.generate = generate
