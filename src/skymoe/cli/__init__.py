"""The ``skymoe`` command: a thin dispatcher over the layers below.

Each sub-command lives in its own module under ``skymoe.cli`` and exposes
``register(subparsers)``; the module adds its parser(s) and sets ``func`` to a
callable taking the parsed ``argparse.Namespace`` and returning an exit code.
Heavy imports (torch, transformers) happen inside those callables so that
``skymoe --help`` stays fast.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import select
import sys

from skymoe import __version__
from skymoe.errors import SkyMoEError

# Order = order in `skymoe --help`.
COMMAND_MODULES = [
    "demo",
    "assets",
    "data",
    "model",
    "train",
    "eval",  # eval + score
    "predict",  # predict + chat
    "scene",
    "serve",  # serve + demo-ui
]

# At exit the interpreter runs full garbage collections over every object torch and transformers made: 1-3 s
# of a busy 2-core machine per command (0.3 s without), for memory the OS takes back anyway. Skip them.
atexit.register(gc.freeze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skymoe", description="Mixture-of-experts vision-language models for remote sensing.")
    parser.add_argument("--version", action="version", version=f"skymoe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"skymoe.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # some other pipe (a worker process): a real failure
        # the reader went away (`skymoe data show ... | head`): stop quietly, as Unix tools do; stdout goes
        # to devnull so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except SkyMoEError as exc:  # bad user input: one clear line, no traceback
        print(f"skymoe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: keep the traceback
            raise
        # an --out under /proc, a read-only folder, a missing parent: the path and the reason are the message
        print(f"skymoe: error: file {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on its writing end)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced stdout (io.UnsupportedOperation is an OSError)
        return False
    if not hasattr(select, "poll"):  # Windows
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
