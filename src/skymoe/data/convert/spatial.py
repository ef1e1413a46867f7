"""Spatial train / val / test splits of chips cut from one scene: no held-out chip overlaps a training chip.

Chips of one scene are neighbours: a random split puts the two halves of a tree (or of a field)
on both sides. Instead the scene is divided into square blocks, each block goes to one split by a
fixed diagonal pattern (so every split samples the whole scene, and no two test blocks touch along
a row or column), and a chip follows the block holding its centre. A chip that still overlaps a
chip of a held-out split (the last chip of a row is flush with the scene's edge, so it may overlap
its neighbour) is dropped from the less held-out split: test wins over val, val over train.
"""
from __future__ import annotations

from skymoe.data.schema import Sample

# Block (i, j) goes to PATTERN[(i + 2 * j) % 4]: a quarter test, a quarter val, half train.
PATTERN = ("train", "train", "val", "test")
HELD_OUT_ORDER = ("test", "val", "train")  # who keeps a chip that two splits would share


def block_split(window: tuple[int, int, int, int], block: int) -> str:
    """The split of the chip at ``window`` (x, y, w, h): that of the block holding its centre."""
    x, y, w, h = window
    i, j = int((x + w / 2) // block), int((y + h / 2) // block)
    return PATTERN[(i + 2 * j) % len(PATTERN)]


def _overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def split_chips(samples: list[Sample], block: int) -> dict[str, list[Sample]]:
    """The samples of one scene's chips by split (``meta["window"]`` locates each chip; a whole image is one chip).

    Every sample's ``split`` is set to the split it lands in.
    """
    windows = {s.image: tuple(s.meta.get("window") or (0, 0, *s.image_size)) for s in samples}
    chosen: dict[str, str] = {}
    for split in HELD_OUT_ORDER:
        for image, window in windows.items():
            if image in chosen or block_split(window, block) != split:
                continue
            if not any(chosen[other] != split and _overlaps(window, windows[other]) for other in chosen):
                chosen[image] = split
    out: dict[str, list[Sample]] = {split: [] for split in PATTERN}
    for sample in samples:
        if sample.image in chosen:
            sample.split = chosen[sample.image]
            out[sample.split].append(sample)
    return out
