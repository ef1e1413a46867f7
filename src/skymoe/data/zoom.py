"""The zoom view: the box an instruction names, cropped from its image for the frozen tower to read at full size.

A region caption or a region question names its place as a box. On the demo's 8x8 grid of a
128 px image an object is a few pixels inside one or two cells, and the cells it covers say
little about it: a linear probe on them names 0.72-0.80 of MGRS-mini's object captions, while
the same probe on the tower's features of the box's crop, resized to the tower's input size,
names 0.98-0.99, at 32 px as at 128 (``benchmarks/region_probe.py``). The prior that copies the caption
of the nearest training crop names 0.85-0.88. So, like the region features of GPT4RoI and Ferret
but read by re-encoding the crop (a zoom) rather than pooling a finer map: the tower reads the
square around the instruction's (last) box, and the evidence head (:mod:`skymoe.model.evidence`)
adds its averaged features to what it hands the answer. Written by hand: no library crops a VLM
prompt's box for its tower.

The view goes through the batch's feature source like any other (:mod:`skymoe.data.feature_cache`):
cached by the view it crops (the image's content, a CDA edit), the box and the size it is read at,
so that a training run encodes each zoom once.
"""
from __future__ import annotations

import torch
from PIL import Image

from skymoe.data.boxes import BOX_PATTERN, X_TOKENS
from skymoe.data.feature_cache import BLIND_KEY, Produced, ViewRequest

MIN_SIDE = 4  # pixels: a box of a pixel or two still gets a crop the resize can read
ZOOM_FORMAT = 1  # in every zoom's cache key: bump when what a zoom is (its crop) changes


def instruction_box(input_ids: list[int], instruction_mask: list[int], location_start: int) -> tuple[int, ...] | None:
    """The last x, y, x, y run of location tokens in the instruction (0-100 each), or None: the box the
    question being answered names (the model's :func:`skymoe.model.grid_reader.instruction_box_cover` reads
    the same one)."""
    span = len(X_TOKENS)
    kinds = [(i - location_start) // span if m and 0 <= i - location_start < 2 * span else -1
             for i, m in zip(input_ids, instruction_mask)]
    for first in range(len(kinds) - 4, -1, -1):
        if tuple(kinds[first : first + 4]) == BOX_PATTERN:
            return tuple((input_ids[first + k] - location_start) % span for k in range(4))
    return None


def zoom_crop(image, box: tuple[int, ...]):
    """The square of ``image`` (PIL) centred on ``box`` (0-100) with the box's longer side (at least MIN_SIDE
    pixels); what lies outside the image is black."""
    width, height = image.size
    x1, y1, x2, y2 = (v / (len(X_TOKENS) - 1) for v in box)
    side = max((x2 - x1) * width, (y2 - y1) * height, MIN_SIDE)
    centre_x, centre_y = (x1 + x2) / 2 * width, (y1 + y2) / 2 * height
    corners = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    return image.crop(tuple(round(v) for v in corners))


def zoom_request(request: ViewRequest, box: tuple[int, ...], size: int | None = None) -> ViewRequest:
    """The zoom of the view ``request`` makes (a CDA edit's zoom crops the edited image), read by the tower at
    ``size`` (None: the processor's image size). Every zoom of the blind control's constant image is one constant
    image too (the processor makes it constant), read at that size."""
    if request.key == BLIND_KEY:
        return ViewRequest(f"{BLIND_KEY}|zoom{size or ''}", lambda: Produced(Image.new("RGB", (1, 1)), size=size))
    key = f"{request.key}|zoom{ZOOM_FORMAT}-{size or ''}:{','.join(map(str, box))}"
    return ViewRequest(key, lambda: Produced(zoom_crop(request.produce().image, box), size=size))


def zoom_inputs(features: list[dict], requests: list[ViewRequest], source, location_start: int, size: int | None = None) -> dict:
    """``{"zoom_" + source.batch_key: [B, ...]}``: each row's zoom through ``source`` (features or pixels), zeros
    in the rows whose instruction names no box; {} when none does. ``features``: the processor's encoded rows."""
    boxes = [instruction_box(f["input_ids"], f["instruction_mask"], location_start) for f in features]
    rows = [i for i, box in enumerate(boxes) if box is not None]
    if not rows:
        return {}
    entries = source.get([zoom_request(requests[i], boxes[i], size) for i in rows])
    zoom = torch.zeros((len(features), *entries[0].tensor.shape), dtype=entries[0].tensor.dtype)
    zoom[rows] = torch.stack([e.tensor for e in entries])
    return {"zoom_" + source.batch_key: zoom}
