"""``skymoe assets list|fetch|verify``: the pinned external assets (see :mod:`skymoe.assets`)."""
from __future__ import annotations

import argparse

from skymoe import assets


def register(subparsers) -> None:
    parser = subparsers.add_parser("assets", help="list, fetch and verify the pinned external assets")
    sub = parser.add_subparsers(dest="assets_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="every registered asset, its pin, licence and cache state")
    p.set_defaults(func=_list)

    p = sub.add_parser("fetch", help="download and extract assets (default: every non-optional one)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="include optional assets (e.g. gemma3-270m)")
    p.add_argument("--force", action="store_true", help="re-fetch even if the cached copy is intact")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("verify", help="check the sha256 of cached assets (default: every non-optional one)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=_verify)


def _selected(args: argparse.Namespace) -> list[str]:
    if args.names:
        return [assets.asset_spec(n).name for n in args.names]
    return [a.name for a in assets.list_assets() if getattr(args, "all", False) or not a.optional]


def _list(args: argparse.Namespace) -> int:
    for a in assets.list_assets():
        state = "cached" if assets.asset_dir(a.name).is_dir() else "missing"
        optional = " (optional)" if a.optional else ""
        print(f"{a.name}{optional} [{state}] {', '.join(a.packages)}")
        print(f"    {a.description}")
        print(f"    licence: {a.license}")
        print(f"    attribution: {a.attribution}")
    print(f"cache: {assets.cache_dir()} (set ${assets.CACHE_ENV} to move it)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    for path in assets.fetch_assets(_selected(args), force=args.force):
        print(f"{path.name}: {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    failed = 0
    for name in _selected(args):
        problems = assets.verify(name)
        failed += bool(problems)
        print(f"{name}: {'ok' if not problems else 'BAD: ' + '; '.join(problems[:5])}")
        if problems:
            force = " --force" if assets.asset_dir(name).is_dir() else ""
            print(f"    fix: {assets.asset_spec(name).fetch_command}{force}")
    return 1 if failed else 0
