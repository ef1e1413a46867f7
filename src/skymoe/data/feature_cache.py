"""A cache of frozen vision-tower features, per image view, in memory and on disk (bounded).

With a frozen tower the features of an image never change, yet without a cache
the tower runs on every draw of every sample and every image is decoded again:
on a CPU that is most of a training step. :class:`FeatureCache` keeps the tower's
output for each *view* of an image:

* a view is named by a key ``<content digest>|<transform>``: the SHA-1 of the
  image file's bytes (so an edited file is a different key) and how the view was
  made from it (``plain``, a CDA variant, the blind control's constant image);
* entries live under a *namespace*, the fingerprint of everything else that
  shapes the features: tower config and weights, input size, normalisation
  (:func:`skymoe.model.feature_source.tower_fingerprint`). Another tower, resolution or
  normalisation is another namespace, never a stale hit;
* an entry is one ``.safetensors`` file (the features, float32, exactly what the
  tower gave) plus JSON metadata (e.g. the edited answer of a CDA variant),
  written atomically (temporary file + rename); an unreadable entry is
  recomputed with one warning line;
* the disk holds at most ``max_bytes`` (default :data:`DEFAULT_MAX_MB` MiB under
  ``$SKYMOE_CACHE/features``; ``SKYMOE_FEATURE_CACHE_MB`` changes it): past that
  the least recently written entries are removed. A memory layer of at most
  ``memory_bytes`` keeps the entries of the current run at hand.

No library caches per-view model outputs keyed by file content and transform,
hence this module. It knows nothing of models: it is given the function that
runs the tower.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_MB = 4096
DEFAULT_MEMORY_MB = 2048
MAX_MB_ENV = "SKYMOE_FEATURE_CACHE_MB"
SUFFIX = ".safetensors"
_EVICT_TO = 0.9  # after an eviction the disk holds at most this share of max_bytes


def default_root() -> Path:
    return Path(os.environ.get("SKYMOE_CACHE") or Path.home() / ".cache" / "skymoe") / "features"


def default_max_bytes() -> int:
    raw = os.environ.get(MAX_MB_ENV)
    try:
        megabytes = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(f"{MAX_MB_ENV}={raw!r}: expected a size in MiB") from None
    return int(megabytes * 2**20)


_digests: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (remembered per path as given, file, size and modification time within the process:
    one ``stat``, where a ``resolve`` per sample cost a training step more than the feature cache's read)."""
    stat = os.stat(path)
    memo = (os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        with open(path, "rb") as f:
            _digests[memo] = hashlib.file_digest(f, "sha1").hexdigest()
    return _digests[memo]


@dataclass
class Produced:
    """What a view's producer made: the image the tower reads, and metadata to keep with its features."""

    image: object  # a PIL image
    meta: dict = field(default_factory=dict)
    size: int | None = None  # the side the tower reads it at (a zoom's, skymoe.data.zoom); None: the processor's


@dataclass
class ViewRequest:
    """One view of an image: its cache key, and how to make it (called only on a miss)."""

    key: str
    produce: Callable[[], Produced]


@dataclass
class Entry:
    tensor: torch.Tensor  # the view's features [N, C] (or its pixels [3, S, S], see PixelSource)
    meta: dict


class FeatureCache:
    batch_key = "vision_features"  # the model input its tensors are

    def __init__(
        self,
        encode: Callable[[list], torch.Tensor],
        namespace: str,
        root: str | Path | None = None,
        *,
        max_bytes: int | None = None,
        memory_bytes: int = DEFAULT_MEMORY_MB * 2**20,
        disk: bool = True,
    ):
        """``encode(images) -> [B, N, C]`` runs the frozen tower (``encode(images, size)`` for views read at their
        own size, :attr:`Produced.size`); ``namespace`` is its fingerprint."""
        self.encode = encode
        self.namespace = namespace
        self.root = Path(root) if root is not None else default_root()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self.memory_bytes = memory_bytes
        self.disk = disk
        self._memory: OrderedDict[str, Entry] = OrderedDict()
        self._memory_size = 0
        self._disk_index: OrderedDict[str, int] | None = None  # path -> bytes, oldest first (built on first write)
        self._disk_total = 0
        self.stats = {"hits": 0, "misses": 0, "recomputed_corrupt": 0}

    # ---- lookup -------------------------------------------------------------------------------
    def get(self, requests: Sequence[ViewRequest]) -> list[Entry]:
        """The entry of every request; the misses are produced and encoded in one batch per input size, then stored."""
        if not requests:
            return []
        entries: list[Entry | None] = [self._lookup(r.key) for r in requests]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.stats["hits"] += len(requests) - len(missing)
        self.stats["misses"] += len(missing)
        produced = {i: requests[i].produce() for i in missing}
        for size, group in _by_size(produced).items():  # one batch per input size
            with torch.no_grad():
                features = _call(self.encode, [produced[i].image for i in group], size).detach().to("cpu", torch.float32)
            for i, f in zip(group, features):  # clone: an entry must not keep the batch alive
                entries[i] = Entry(f.clone(), produced[i].meta)
                self._store(requests[i].key, entries[i])
        return entries  # type: ignore[return-value]

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.root / self.namespace / digest[:2] / (digest + SUFFIX)

    def _lookup(self, key: str) -> Entry | None:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            return entry
        if not self.disk:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = _read_entry(path)
        except Exception as exc:  # a torn or foreign file: never a crash, never a stale value
            self.stats["recomputed_corrupt"] += 1
            logger.warning("feature cache: unreadable entry %s (%s); recomputing it", path, str(exc).splitlines()[0][:120])
            return None
        self._remember(key, entry)
        return entry

    # ---- storing ------------------------------------------------------------------------------
    def _remember(self, key: str, entry: Entry) -> None:
        size = entry.tensor.numel() * entry.tensor.element_size()
        if size > self.memory_bytes:
            return
        if key in self._memory:  # a key asked twice in one batch (two questions on one box) is stored twice
            old = self._memory.pop(key)
            self._memory_size -= old.tensor.numel() * old.tensor.element_size()
        self._memory[key] = entry
        self._memory_size += size
        while self._memory_size > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_size -= old.tensor.numel() * old.tensor.element_size()

    def _store(self, key: str, entry: Entry) -> None:
        self._remember(key, entry)
        if not self.disk or self.max_bytes <= 0:
            return
        path = self._path(key)
        try:
            written = _write_entry(path, entry)
        except OSError as exc:  # a full or read-only disk costs speed, not the run
            logger.warning("feature cache: cannot write %s (%s); continuing without storing it", path, exc)
            return
        index = self._index()
        self._disk_total += written - index.pop(str(path), 0)
        index[str(path)] = written
        if self._disk_total > self.max_bytes:
            self._evict(index)

    def _index(self) -> OrderedDict[str, int]:
        """Every entry under the root (all namespaces), oldest first, read once per process."""
        if self._disk_index is None:
            files = []
            if self.root.is_dir():
                for path in self.root.rglob("*" + SUFFIX):
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    files.append((stat.st_mtime_ns, str(path), stat.st_size))
            self._disk_index = OrderedDict((p, size) for _, p, size in sorted(files))
            self._disk_total = sum(self._disk_index.values())
        return self._disk_index

    def _evict(self, index: OrderedDict[str, int]) -> None:
        while index and self._disk_total > _EVICT_TO * self.max_bytes:
            path, size = index.popitem(last=False)
            Path(path).unlink(missing_ok=True)
            self._disk_total -= size

    def disk_bytes(self) -> int:
        self._index()
        return self._disk_total


def _read_entry(path: Path) -> Entry:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        features = f.get_tensor("features")
    if features.dim() != 2 or not torch.isfinite(features).all():  # what the tower gives is [N, C] and finite
        raise ValueError(f"features of shape {tuple(features.shape)} or not finite")
    return Entry(features, meta)


def _write_entry(path: Path, entry: Entry) -> int:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_file({"features": entry.tensor.contiguous()}, tmp, metadata={"meta": json.dumps(entry.meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


class PixelSource:
    """:class:`FeatureCache`'s interface without a cache: each view is made and preprocessed into pixels.

    For a tower that trains (its features change every step) or a cache switched off; the model's
    forward then runs the tower on ``pixel_values``.
    """

    batch_key = "pixel_values"

    def __init__(self, preprocess: Callable[[list], torch.Tensor]):
        self.preprocess = preprocess

    def get(self, requests: Sequence[ViewRequest]) -> list[Entry]:
        produced = dict(enumerate(r.produce() for r in requests))
        entries: list[Entry | None] = [None] * len(requests)
        for size, group in _by_size(produced).items():
            pixels = _call(self.preprocess, [produced[i].image for i in group], size)
            for i, px in zip(group, pixels):
                entries[i] = Entry(px, produced[i].meta)
        return entries  # type: ignore[return-value]


def _by_size(produced: dict[int, Produced]) -> dict[int | None, list[int]]:
    """The indices of ``produced`` grouped by the size their views are read at, in order."""
    groups: dict[int | None, list[int]] = {}
    for i, p in produced.items():
        groups.setdefault(p.size, []).append(i)
    return groups


def _call(encode: Callable, images: list, size: int | None):
    """``encode(images)``, or ``encode(images, size)`` for views read at their own size."""
    return encode(images) if size is None else encode(images, size)


BLIND_KEY = "blind|constant"  # the blind control's one view: every image is the same constant image


def image_request(path: str, load: Callable[[str], object], *, blind: bool = False) -> ViewRequest:
    """The request for the plain view of the image file ``path`` (the blind control's constant image with ``blind``)."""
    if blind:
        from PIL import Image

        return ViewRequest(BLIND_KEY, lambda: Produced(Image.new("RGB", (1, 1))))  # the processor makes it constant
    return ViewRequest(f"{file_digest(path)}|plain", lambda: Produced(load(path)))
