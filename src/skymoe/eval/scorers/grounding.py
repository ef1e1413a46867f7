"""Visual grounding (text -> box): Acc@0.5, mean IoU and the parse-failure rate.

The predicted text is parsed with :func:`skymoe.data.boxes.parse_boxes` (canonical
``[x1, y1, x2, y2]`` on a 0-100 scale of the image, tolerant of the usual
variations; it never guesses). Per sample, true and predicted boxes are matched
one to one (greedily, highest IoU first) and the sample's IoU is the sum of the
matched IoUs over the larger of the two box counts: the plain IoU for the usual
one-box referring expression, while every missing or extra box counts as IoU 0
(so answering with many boxes cannot score well). Unparsable output or no box at
all is a miss with IoU 0, counted in ``parse_failures``.

* **Acc@0.5** = share of samples with IoU >= 0.5; **mIoU** = mean sample IoU.
"""
from __future__ import annotations

from skymoe.data.schema import Box
from skymoe.errors import DataError
from skymoe.eval.records import Prediction

PRIMARY = "acc@0.5"
IOU_THRESHOLD = 0.5


def sample_iou(p: Prediction) -> float | None:
    """The sample's IoU, or None when the prediction cannot be parsed into boxes."""
    from skymoe.data.boxes import parse_boxes

    if not p.gt_boxes:
        raise DataError("grounding sample has no true box", record=p.id, field="gt_boxes")
    if not p.image_size:
        raise DataError("grounding sample needs the image size to read boxes", record=p.id, field="image_size")
    parsed = parse_boxes(p.prediction, tuple(p.image_size))
    if parsed.failed or not parsed.boxes:
        return None
    truths = [Box(*b) for b in p.gt_boxes]
    pairs = sorted(((t.iou(b), i, j) for i, t in enumerate(truths) for j, b in enumerate(parsed.boxes)), key=lambda x: -x[0])
    matched_truths, matched_boxes, total = set(), set(), 0.0
    for iou, i, j in pairs:
        if i not in matched_truths and j not in matched_boxes:
            matched_truths.add(i)
            matched_boxes.add(j)
            total += iou
    return total / max(len(truths), len(parsed.boxes))


def score(predictions: list[Prediction]) -> dict:
    ious = [sample_iou(p) for p in predictions]
    failures = sum(1 for iou in ious if iou is None)
    ious = [iou or 0.0 for iou in ious]
    n = len(predictions)
    return {
        "n": n,
        "acc@0.5": sum(iou >= IOU_THRESHOLD for iou in ious) / n,
        "mean_iou": sum(ious) / n,
        "parse_failure_rate": failures / n,
        "parse_failures": failures,
    }
