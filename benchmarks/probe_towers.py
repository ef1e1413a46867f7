"""Probe ceilings of the frozen towers: GeoEmbed V3 (aerial, self-supervised) beside EfficientNet-Lite0 (ImageNet).

On the demo's splits (``skymoe.demo.splits.build_demo_splits``: the real datasets with NEON trees and
Landsat land cover, and MGRS-mini), a linear probe (``skymoe.eval.probe``, as the demo's learning
controls fit it) is fitted on the training samples' frozen features and scored on the unseen
images, for every dataset and task a probe applies to (classification, multilabel, counting).
Each tower at 128 px on the same 4x4 grid: EfficientNet-Lite0 with multi-scale tokens (strides
8, 16, 32 folded onto 4x4, 2,368 channels: the demo's setting when this was measured), GeoEmbed V3's
pooled 4x4 grid (512 channels). The prior (most frequent training answer per question type) is printed beside them.

    python benchmarks/probe_towers.py [--scenes 1000] [--out benchmarks/results/probe_towers.md]

Features are cached (``$SKYMOE_CACHE/features``), so a rerun costs the probes only.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from _machine import machine

TOWERS = ("efficientnet-lite0", "geoembed-v3")


def tower_source(name: str, texts: list[str]):
    """The feature cache over the frozen tower ``name`` at 128 px (a tiny LLM beside it: only the tower is read)."""
    from transformers import AutoConfig

    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer, special_token_ids
    from skymoe.model.build import TINY_TEXT, build_model, make_config
    from skymoe.model.configuration import EfficientNetLiteConfig
    from skymoe.model.feature_source import feature_source
    from skymoe.model.geoembed import GeoEmbedConfig

    vision = EfficientNetLiteConfig(feature_strides=[8, 16, 32]) if name == "efficientnet-lite0" else GeoEmbedConfig()
    tokenizer = build_tokenizer(texts, vocab_size=500)
    config = make_config(vision, AutoConfig.for_model("llama", **TINY_TEXT["llama"]), image_size=128, vocab_size=len(tokenizer),
                         special_ids=special_token_ids(tokenizer), projector={"type": "mlp2x_gelu"}, vision_pretrained=name)
    model = build_model(config, tokenizer)
    return feature_source(model, SkyMoEProcessor.from_model_config(model.config, tokenizer))


def scores(records) -> dict[tuple[str, str], tuple[str, int, float, float]]:
    """{(dataset, task): (metric, n, probe, prior)}."""
    from skymoe.eval.aggregate import scorer_of
    from skymoe.eval.samplewise import stats_of

    groups = defaultdict(list)
    for p in records:
        groups[(p.dataset, p.task)].append(p)
    out = {}
    for key, group in sorted(groups.items()):
        scorer = scorer_of(group)
        prior = stats_of(scorer.name, [replace(p, prediction=p.baseline) for p in group]).metric()
        out[key] = (scorer.primary, len(group), stats_of(scorer.name, group).metric(), prior)
    return out


def main() -> None:
    from skymoe.demo.splits import build_demo_splits
    from skymoe.eval.baselines import Baseline
    from skymoe.eval.runner import probe_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000, help="MGRS-mini scenes (80%% train, 10%% test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_towers.md")
    args = parser.parse_args()
    splits = build_demo_splits(seed=0, mgrs_scenes=args.scenes, eval_per_task=250)
    texts = [t.text for s in splits.train[:2000] for t in s.conversation]
    prior = Baseline(splits.train)
    table, seconds = {}, {}
    for name in TOWERS:
        start = time.perf_counter()
        records = probe_records(splits.train, splits.unseen_images, tower_source(name, texts))
        records = [replace(p, baseline=prior.predict(s)) for p, s in zip(records, _samples_of(records, splits.unseen_images))]
        table[name], seconds[name] = scores(records), time.perf_counter() - start
    lines = ["# Probe ceilings: GeoEmbed V3 beside EfficientNet-Lite0", "",
             f"`python benchmarks/probe_towers.py --scenes {args.scenes}`; {machine()}.", "",
             "| dataset | task | metric | n | prior | EfficientNet-Lite0 probe | GeoEmbed V3 probe |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, (metric, n, probe, base) in table[TOWERS[0]].items():
        other = table[TOWERS[1]].get(key)
        lines.append(f"| {key[0]} | {key[1]} | {metric} | {n} | {base:.3f} | {probe:.3f} | {'—' if other is None else f'{other[2]:.3f}'} |")
    lines += ["", "Wall time (features + probes; a cached feature is not recomputed): " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + "."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _samples_of(records, samples):
    by_key = {(s.dataset, s.id): s for s in samples}
    return [by_key[(p.dataset, p.id)] for p in records]


if __name__ == "__main__":
    main()
