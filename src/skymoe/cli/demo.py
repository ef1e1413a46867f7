"""`skymoe demo`: train, evaluate and report a SkyMoE on the embedded real data."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train + evaluate + report on the embedded real data (minutes on a CPU)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--minutes", type=float, default=9.5, help="time budget; more minutes = more training steps (default: 9.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (seconds), to check the pipeline")
    p.add_argument("--llm", choices=["tiny", "gemma3-270m", "smollm2-135m"], default="tiny",
                   help="tiny: a small Llama trained from scratch; gemma3-270m: the pretrained Gemma-3-270M GGUF "
                   "(Gemma Terms of Use; 253 MB, ~2 s per step) or smollm2-135m: SmolLM2-135M-Instruct (Apache-2.0; "
                   "98 MB) as the frozen base of LoRA experts. Fetched on first use; its licence is printed")
    p.add_argument("--recipe", choices=["skymoe", "rsmoe"], default="skymoe",
                   help="skymoe: LoRA experts in the LLM's FFNs under the task-aware router (default); rsmoe: RS-MoE's "
                   "instruction-aware Q-Former and lightweight expert LLMs, each reading its own routing instruction")
    p.add_argument("--heldout", choices=["test", "val"], default="test",
                   help="the held-out splits evaluated: test (the report's numbers) or val (for tuning a recipe: "
                   "trains on the train splits only and never reads a test split)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from skymoe.demo.run import run_demo

    report = run_demo(args.out, minutes=args.minutes, seed=args.seed, smoke=args.smoke, llm=args.llm,
                      heldout=args.heldout, recipe=args.recipe)
    model = report.parent / "stage2" / "model"
    print(f"\nreport: {report}\n(also {report.with_suffix('.md')})")
    print(f"chat with the model:  skymoe chat --model {model} --image IMAGE.tif")
    print(f"serve it (OpenAI API): skymoe serve --model {model}")
    return 0
