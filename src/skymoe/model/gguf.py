"""A GGUF causal LM (the Gemma-3-270M and SmolLM2-135M assets) as an ordinary Hugging Face model folder.

transformers loads GGUF files (``from_pretrained(dir, gguf_file=...)``, de-quantised
to float) but refuses to ``save_pretrained`` them, and every other loader in the
project takes a model folder. So the GGUF is converted once — config, tokenizer
and weights as safetensors — into a cache folder that ``model.llm`` can name.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from skymoe.errors import ConfigError

GGUF_LLM_ASSETS = ("gemma3-270m", "smollm2-135m")  # registry assets holding a GGUF causal LM


def pretrained_llm_folder(llm: str) -> Path:
    """The model folder ``model.llm`` names: a local causal-LM directory, or a GGUF LLM asset (converted once).

    Anything else is a config error: a hub id would mean a download, and nothing is downloaded at run time.
    """
    if llm in GGUF_LLM_ASSETS:
        from skymoe.assets import cache_dir, get_asset

        return gguf_as_hf_folder(get_asset(llm), cache_dir() / "converted" / llm)
    if not (Path(llm) / "config.json").is_file():
        raise ConfigError(f"'model.llm.pretrained' {llm!r}: expected a local causal-LM directory (with config.json) or one of the "
                          f"assets {list(GGUF_LLM_ASSETS)}; nothing is downloaded at run time")
    return Path(llm)


def gguf_file_in(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf")
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected exactly one .gguf file, found {files}")
    return files[0]


def gguf_as_hf_folder(folder: str | Path, out_dir: str | Path) -> Path:
    """Convert the single GGUF in ``folder`` into ``out_dir`` (skipped when already there); returns ``out_dir``."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, out_dir = Path(folder), Path(out_dir)
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    name = gguf_file_in(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    model.config.quantization_config = None  # weights are de-quantised floats now
    del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    model.config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    save_model(model, str(staging / "model.safetensors"))  # handles the tied embedding / output head
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)  # atomic: a half-written folder is never picked up
    return out_dir
