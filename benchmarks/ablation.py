"""Ablation study on MGRS-mini: do the SkyMoE paper's claims hold at small scale on CPU?

    python benchmarks/ablation.py [--seeds 0 1 2] [--stage1-steps 600] [--stage2-steps 300]
                                  [--eval-per-task 150] [--rows dense moe-e1 ...] [--work runs/ablation]

Every row is the demo's recipe (``skymoe/demo/stage1.yaml`` and ``stage2.yaml``: the frozen EfficientNet-Lite0
with its features cached, 8x8 visual tokens, the box and evidence heads with the zoom, a small Llama trained from scratch,
batch 32, MGRS-mini of the demo's 3000 scenes drawn at the demo's task shares (``SYNTHETIC_TASK_WEIGHTS``), answer-only
loss), changed only where the row says:

* ``dense``          stage 1 only, trained for stage1 + stage2 steps (the same number of samples as every MoE row);
* ``moe-e1``         stage 2 with 1 expert, top-1, LoRA rank 2r (the active expert parameters of top-2 of rank r);
* ``moe-e4``         4 LoRA experts of rank r, top-2, one routing decision per sequence (the demo's stage 2 without CDA);
* ``moe-e8``         8 LoRA experts, top-2, sequence routing;
* ``moe-e8-token``   as moe-e8 with one routing decision per token;
* ``moe-e8-cda``     as moe-e8 with context-disentangled augmentation (the demo's CDA settings);
* ``moe-e8-ffn``     as moe-e8 with upcycled FFN experts instead of LoRA experts (more active parameters:
                     upcycling copies the whole FFN, so this row cannot match the others; the table says so).

The RS-MoE rows are the ``--recipe rsmoe`` demo's (``skymoe/demo/rsmoe_stage1.yaml`` and ``rsmoe_stage2.yaml``:
an instruction-aware Q-Former, then 3 expert LLMs with rank-1 FFN LoRA adapters and per-expert routing
instructions), from their own stage-1 model of the seed, changed only where the row says:

* ``rsmoe-top2``     the recipe: 3 expert LLMs, top-2, the router's gate;
* ``rsmoe-top1``     top-1 (one full LLM pass per sample, as dense);
* ``rsmoe-uniform``  router off: all 3 experts with equal weights (``moe.gate: uniform``);
* ``rsmoe-1stage``   one stage: stage 2 from a 1-step stage-1 model, the LLM trained too (``optim.train_lm``),
                     for stage1 + stage2 steps (RS-MoE's one-stage baseline: no dense foundation first).

Every MoE row starts from the same stage-1 model of its seed (trained for stage1 steps), so rows differ only
in what the ablation changes. Each row is trained and evaluated for every seed on the same unseen test scenes
(``--eval-per-task`` samples of each task); the table reports mean ± std over seeds of the primary metrics
beside the prior baseline, and the wall time of everything. Writes ``benchmarks/results/ablation.md``
(``--report``), ``ablation.json`` and ``ablation.png`` next to it.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
SCENES = 3000  # the demo's MGRS-mini


@dataclass(frozen=True)
class Row:
    name: str
    description: str
    stage: int
    moe: dict = field(default_factory=dict)  # model.moe settings of the row
    cda: bool = False
    recipe: str = "skymoe"  # the demo recipe whose packaged configs the row changes (skymoe.demo.run.RECIPES)
    one_stage: bool = False  # stage 2 from a 1-step stage-1 model, training the LLM too, for stage1 + stage2 steps


ROWS: tuple[Row, ...] = (
    Row("dense", "dense (stage 1 only, same sample budget)", 1),
    Row("moe-e1", "MoE E=1, top-1, LoRA r=2r", 2, {"num_experts": 1, "top_k": 1, "lora_rank": "2r"}),
    Row("moe-e4", "MoE E=4, top-2, LoRA, sequence routing", 2, {"num_experts": 4, "top_k": 2}),
    Row("moe-e8", "MoE E=8, top-2, LoRA, sequence routing", 2, {"num_experts": 8, "top_k": 2}),
    Row("moe-e8-token", "MoE E=8, token routing", 2, {"num_experts": 8, "top_k": 2, "routing": "token"}),
    Row("moe-e8-cda", "MoE E=8 + CDA", 2, {"num_experts": 8, "top_k": 2}, cda=True),
    Row("moe-e8-ffn", "MoE E=8, FFN experts (upcycled)", 2, {"num_experts": 8, "top_k": 2, "expert_type": "ffn"}),
    Row("rsmoe-top2", "RS-MoE: 3 expert LLMs, top-2", 2, recipe="rsmoe"),
    Row("rsmoe-top1", "RS-MoE: 3 expert LLMs, top-1", 2, {"top_k": 1}, recipe="rsmoe"),
    Row("rsmoe-uniform", "RS-MoE: router off (uniform gate)", 2, {"top_k": 3, "gate": "uniform"}, recipe="rsmoe"),
    Row("rsmoe-1stage", "RS-MoE: one stage", 2, recipe="rsmoe", one_stage=True),
)

TASKS = ("classification", "caption", "vqa", "grounding", "region_caption", "counting")
# columns of the main table: metric key -> title (per-task keys get the scorer's primary metric name added)
HEADLINE = {"overall": "overall", **{t: t for t in TASKS}, "spec_task": "expert-task MI (norm.)",
            "spec_granularity": "expert-granularity MI (norm.)"}


def train_config(row: Row, seed: int, steps: int, data: Path, init_from: Path | None):
    """The demo's packaged stage-1 / stage-2 config with this row's changes, data, steps and seed."""
    from skymoe.train.config import parse_config
    from skymoe.demo.run import RECIPES, SYNTHETIC_TASK_WEIGHTS, packaged_config

    raw = copy.deepcopy(packaged_config(RECIPES[row.recipe][row.stage - 1]))
    moe = dict(row.moe)
    if moe.get("lora_rank") == "2r":
        moe["lora_rank"] = 2 * raw["model"]["moe"]["lora_rank"]
    raw["model"]["moe"].update(moe)
    if init_from is not None:
        raw["model"]["init_from"] = str(init_from)
    raw["data"]["mix"] = [{"path": str(data), "balance": "task", "task_weights": SYNTHETIC_TASK_WEIGHTS}]
    if row.stage == 2:
        raw["cda"]["enabled"] = row.cda or (row.recipe != "skymoe" and raw["cda"]["enabled"])  # a recipe row keeps its own
        raw["optim"]["train_lm"] = row.one_stage
    raw.update(seed=seed, max_steps=steps, log_every=50, checkpoint_every=100_000)
    return parse_config(raw)


def write_suite(work: Path, per_task: int) -> tuple[Path, Path]:
    """The training file (MGRS-mini train) and a suite of ``per_task`` seeded test samples of each task,
    its prior baseline fitted on the training file."""
    import yaml

    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.data.schema import write_jsonl

    root = ensure_generated(n=SCENES, workers=os.cpu_count() or 1)
    test = load_split("test", root)
    rng = random.Random(0)
    chosen = []
    for task in sorted({s.task.value for s in test}):
        of_task = [s for s in test if s.task.value == task]
        chosen += rng.sample(of_task, min(per_task, len(of_task)))
    write_jsonl(chosen, work / "test.jsonl")
    raw = {
        "name": "mgrs_mini_ablation",
        "description": f"MGRS-mini ({SCENES} scenes): {per_task} unseen test samples per task",
        "generation": {"max_new_tokens": 24, "batch_size": 64},
        "baseline_path": str(root / "train.jsonl"),
        "datasets": [{"path": "test.jsonl"}],
    }
    (work / "suite.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "train.jsonl", work / "suite.yaml"


def headline(metrics: dict, part: str = "model") -> dict[str, float]:
    """The numbers the tables show, from an evaluation's metrics.json (``part``: "model" or "baseline").

    Per task the scorer's primary metric, per (task, granularity) likewise, ``overall`` = their mean over
    tasks, and the routing specialisation (mutual information between expert choice and task / granularity,
    normalised by the label entropy) where the model routes.
    """
    scored = metrics.get(part) or {}
    out = {t: float(e["value"]) for t, e in (scored.get("overall") or {}).items() if e.get("value") is not None}
    if out:
        out["overall"] = statistics.fmean(out.values())
    for gran, by_task in (scored.get("by_granularity") or {}).items():
        for task, values in by_task.items():
            primary = scored["overall"][task]["metric"]
            if values.get(primary) is not None:
                out[f"{task}/{gran}"] = float(values[primary])
    routing = metrics.get("routing") or {}
    if part == "model" and routing.get("status") == "ok":
        for key in ("task", "granularity"):
            value = routing["specialisation"][key]["normalized"]
            if value is not None:
                out[f"spec_{key}"] = float(value)
    return out


def primary_names(metrics: dict) -> dict[str, str]:
    return {t: e["metric"] for t, e in (metrics.get("model", {}).get("overall") or {}).items()}


def run_one(row: Row, seed: int, args, data: Path, suite: Path, stage1: dict) -> dict:
    """Train and evaluate one (row, seed); a finished one is read back, so the study resumes where it stopped."""
    from skymoe.eval import evaluate
    from skymoe.train import train

    out = args.work / f"seed{seed}" / row.name
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    start = time.perf_counter()
    steps = args.stage1_steps + args.stage2_steps if row.stage == 1 or row.one_stage else args.stage2_steps
    result = train(train_config(row, seed, steps, data, stage1[row.name] if row.stage == 2 else None), out / "train")
    train_s = time.perf_counter() - start
    metrics = evaluate(result.model_dir, str(suite), out / "eval")
    record = {"row": row.name, "seed": seed, "steps": result.steps, "samples": result.samples_seen,
              "train_seconds": round(train_s, 1), "eval_seconds": round(time.perf_counter() - start - train_s, 1),
              "samples_per_second": round(result.samples_per_second, 2), "final_loss": result.final_loss,
              "params": _params(result.model_dir), "metrics": headline(metrics),
              "baseline": headline(metrics, "baseline"), "primary": primary_names(metrics)}
    (out / "result.json").write_text(json.dumps(record, indent=2))
    return record


def stage1_model(seed: int, args, data: Path, recipe: str = "skymoe", steps: int | None = None) -> tuple[Path, float]:
    """The shared stage-1 starting point of the MoE rows of this seed and recipe (``steps``: a one-stage row's
    1-step model), and the seconds it took."""
    from skymoe.train import train

    steps = args.stage1_steps if steps is None else steps
    out = args.work / f"seed{seed}" / ("stage1" if recipe == "skymoe" else f"stage1-{recipe}") / ("" if steps == args.stage1_steps else f"steps{steps}")
    done = out / "stage1.json"
    if not done.exists():
        result = train(train_config(Row("stage1", "stage 1", 1, recipe=recipe), seed, steps, data, None), out)
        done.write_text(json.dumps({"seconds": round(result.seconds, 1), "steps": result.steps}))
    return out, json.loads(done.read_text())["seconds"]


def _params(model_dir: str) -> dict:
    """Total and active-per-token parameter counts, from the model summary."""
    from skymoe.model.summary import summarize

    summary = summarize(model_dir)
    return {"total": int(summary["total"]), "active": int(summary["active_per_token"])}


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = _stats(values)
    return f"{mean:.3f} ± {std:.3f}"


def collect(records: list[dict], part: str = "metrics") -> dict[str, dict[str, list[float]]]:
    """row -> metric key -> one value per seed."""
    table: dict[str, dict[str, list[float]]] = {}
    for rec in records:
        for key, value in rec[part].items():
            table.setdefault(rec["row"], {}).setdefault(key, []).append(value)
    return table


def claims(table: dict[str, dict[str, list[float]]]) -> list[str]:
    """The paper's claims, each with the measured difference and whether it exceeds the seed spread."""
    lines = []

    def compare(label: str, better: str, worse: str, key: str) -> None:
        a, b = table.get(better, {}).get(key), table.get(worse, {}).get(key)
        if not a or not b:
            lines.append(f"* {label}: not measured ({better} / {worse} have no `{key}`).")
            return
        (ma, sa), (mb, sb) = _stats(a), _stats(b)
        delta = ma - mb
        if abs(delta) <= max(sa, sb):
            verdict = "inconclusive (difference within the seed spread)"
        else:
            verdict = "held" if delta > 0 else "did NOT hold (reversed)"
        lines.append(f"* {label}: **{verdict}** — {better} {ma:.3f} ± {sa:.3f} vs {worse} {mb:.3f} ± {sb:.3f} "
                     f"(`{key}`, Δ {delta:+.3f}).")

    compare("More experts help: 8 > 4", "moe-e8", "moe-e4", "overall")
    compare("More experts help: 4 > 1", "moe-e4", "moe-e1", "overall")
    compare("MoE beats dense at equal sample budget", "moe-e8", "dense", "overall")
    compare("CDA helps counting (image + region counting task)", "moe-e8-cda", "moe-e8", "counting")
    compare("CDA helps VQA (count/presence/colour questions are edited)", "moe-e8-cda", "moe-e8", "vqa")
    compare("Token-level routing beats sequence-level routing", "moe-e8-token", "moe-e8", "overall")
    compare("LoRA experts beat FFN experts", "moe-e8", "moe-e8-ffn", "overall")
    compare("RS-MoE: the instruction router helps (router on > off)", "rsmoe-top2", "rsmoe-uniform", "caption")
    compare("RS-MoE: two stages beat one", "rsmoe-top2", "rsmoe-1stage", "caption")
    compare("RS-MoE: top-2 of the expert LLMs beats top-1", "rsmoe-top2", "rsmoe-top1", "overall")
    compare("RS-MoE recipe against the SkyMoE recipe (moe-e4)", "rsmoe-top2", "moe-e4", "overall")
    for key in ("task", "granularity"):
        values = table.get("moe-e8", {}).get(f"spec_{key}")
        if values:
            mean, std = _stats(values)
            lines.append(f"* Experts specialise by {key}: mutual information between expert choice and {key}, "
                         f"normalised by the {key} entropy (0 = none, 1 = experts determine it), moe-e8: "
                         f"{mean:.3f} ± {std:.3f}.")
        else:
            lines.append(f"* Experts specialise by {key}: not measured (no routing analysis in metrics.json).")
    return lines


def plot(table, floor: dict[str, list[float]], rows: list[Row], titles: dict[str, str], path: Path) -> None:
    """One bar chart per metric (mean ± std over seeds), the prior baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in HEADLINE if any(table.get(r.name, {}).get(k) for r in rows)]
    ncols = min(5, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        names = [r.name for r in rows if table.get(r.name, {}).get(key)]
        stats = [_stats(table[n][key]) for n in names]
        ax.bar(range(len(names)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, color="#4c72b0")
        if floor.get(key):
            ax.axhline(floor[key][0], color="#c44e52", linestyle="--", linewidth=1, label="prior baseline")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(titles[key], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def write_report(records: list[dict], rows: list[Row], args, stage1_seconds: float) -> Path:
    args.report.parent.mkdir(parents=True, exist_ok=True)
    table, floor = collect(records), collect(records, "baseline")
    primary = {t: m for rec in records for t, m in rec["primary"].items()}
    titles = {k: f"{v} ({primary[k]})" if k in primary else v for k, v in HEADLINE.items()}
    baseline_row = next(iter(floor.values()), {})
    plot(table, baseline_row, rows, titles, args.report.with_suffix(".png"))
    keys = [k for k in HEADLINE if any(table.get(r.name, {}).get(k) for r in rows)]
    params = {rec["row"]: rec["params"] for rec in records}
    train_min = (sum(r["train_seconds"] for r in records) + stage1_seconds) / 60
    eval_min = sum(r["eval_seconds"] for r in records) / 60
    body = []
    for r in rows:
        p = params.get(r.name)
        n = sum(rec["row"] == r.name for rec in records)
        body.append([f"{r.name}: {r.description}", *(_fmt(table.get(r.name, {}).get(k, [])) for k in keys),
                     f"{p['total']:,} / {p['active']:,}" if p else "–", str(n)])
    body.append(["prior baseline (most frequent training answer; nearest-neighbour caption)",
                 *(_fmt(baseline_row.get(k, [])[:1]) for k in keys), "–", "–"])
    gran_keys = sorted({k for t in table.values() for k in t if "/" in k})
    gran_body = [[r.name, *(_fmt(table.get(r.name, {}).get(k, [])) for k in gran_keys)] for r in rows]
    lines = [
        "# MGRS-mini ablation",
        "",
        f"Generated by `benchmarks/ablation.py` on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} CPUs, shared with other jobs; torch threads {args.threads}). Seeds: {args.seeds}. "
        f"Recipe: the demo's (`skymoe/demo/stage1.yaml`, `stage2.yaml`; RS-MoE rows: `rsmoe_stage1.yaml`, `rsmoe_stage2.yaml`), batch 32, on MGRS-mini's {SCENES} scenes. "
        f"Budget: stage 1 {args.stage1_steps} steps, stage 2 {args.stage2_steps} steps "
        f"(dense: {args.stage1_steps + args.stage2_steps} steps of stage 1, the same number of samples). "
        f"Evaluation: {args.eval_per_task} seeded MGRS-mini test samples per task (test scenes unseen in training).",
        "",
        f"**Cost:** {len(records)} trained+evaluated runs plus {len(args.seeds)} shared stage-1 runs: "
        f"training {train_min:.1f} min, evaluation {eval_min:.1f} min, {train_min + eval_min:.1f} min of wall time in all.",
        "",
        "Mean ± std over seeds. `overall` = mean over tasks of each task's primary metric. "
        "Params: total / active per token (the `skymoe model summary` count).",
        "",
        *_table(["row", *(titles[k] for k in keys), "params total / active", "seeds"], body),
        "",
        "## Per task and granularity (primary metric)",
        "",
        *_table(["row", *gran_keys], gran_body),
        "",
        "## The paper's claims, as measured here",
        "",
        *claims(table),
        "",
        "Caveat: tiny models trained for minutes on CPU; differences smaller than the seed spread are noise.",
        "",
        f"![ablation]({args.report.with_suffix('.png').name})",
        "",
    ]
    args.report.write_text("\n".join(lines))
    args.report.with_suffix(".json").write_text(json.dumps(records, indent=2))
    return args.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=[r.name for r in ROWS])
    parser.add_argument("--stage1-steps", type=int, default=600)
    parser.add_argument("--stage2-steps", type=int, default=300)
    parser.add_argument("--eval-per-task", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--report", type=Path, default=RESULTS / "ablation.md", help="also writes .json and .png beside it")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data, suite = write_suite(args.work, args.eval_per_task)
    rows = [r for r in ROWS if r.name in args.rows]
    stage1, seconds = {}, {}  # seed -> {row name -> its stage-1 model}; stage-1 model -> seconds (shared by rows)
    for seed in args.seeds:
        stage1[seed] = {}
        for row in (r for r in rows if r.stage == 2):
            path, seconds_taken = stage1_model(seed, args, data, row.recipe, 1 if row.one_stage else None)
            stage1[seed][row.name], seconds[path] = path, seconds_taken
    stage1_seconds = sum(seconds.values())
    records = []
    for row in rows:  # row by row, all seeds each: a stopped study still has complete rows
        for seed in args.seeds:
            records.append(run_one(row, seed, args, data, suite, stage1[seed]))
            print(json.dumps({k: records[-1][k] for k in ("row", "seed", "train_seconds", "eval_seconds", "metrics")}), flush=True)
            write_report(records, rows, args, stage1_seconds)  # a usable table after every run
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
