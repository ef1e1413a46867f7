"""``skymoe train --config CONFIG.yaml [--output DIR] [--resume] [key=value ...]``."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train stage 1 or 2 from a YAML config",
        description="Train a SkyMoE model (stage 1 foundation or stage 2 specialisation). "
        "Multi-GPU / multi-node: run through `accelerate launch -m skymoe train ...` (see docs/TRAINING.md).",
    )
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("--output", default=None, help="output directory (default: out/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --output")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. optim.lr=3e-4")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from skymoe.errors import ConfigError
    from skymoe.train.config import load_config
    from skymoe.train import TrainingError, train

    try:
        cfg = load_config(args.config, args.overrides)
        output = Path(args.output) if args.output else Path("out") / Path(args.config).stem
        train(cfg, output, resume=args.resume)
        _leave_process_group()
    except ConfigError as exc:  # also raised by checks that need the model, e.g. model.moe_layers
        return _fail(exc, 2)
    except TrainingError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt as exc:  # train() says which step and checkpoint; earlier there is nothing to say
        print(f"skymoe train: {str(exc) or 'interrupted before training started'}", file=sys.stderr)
        return 130
    return 0


def _leave_process_group() -> None:
    """A launched rank that exits with its gloo/NCCL group alive can abort in the C++ teardown ("terminate called
    without an active exception", exit -6) after a finished run; every rank leaves the group first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fail(exc: Exception, code: int) -> int:
    print(f"skymoe train: error: {exc}", file=sys.stderr)
    return code
