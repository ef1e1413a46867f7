"""Visual grounding (text -> box): Acc@0.5, mean IoU and the parse-failure rate.

The predicted text is parsed with :func:`skymoe.data.boxes.parse_boxes` (canonical
``[x1, y1, x2, y2]`` on a 0-100 scale of the image, tolerant of the usual
variations; it never guesses). Per sample, each true box is matched with the
predicted box of highest IoU and the sample's IoU is the mean over its true boxes
(= the plain IoU for the usual one-box referring expression). Unparsable output
or no box at all is a miss with IoU 0, counted in ``parse_failures``.

* **Acc@0.5** = share of samples with IoU >= 0.5; **mIoU** = mean sample IoU.
"""
from __future__ import annotations

from skymoe.data.schema import Box, SkyMoEDataError
from skymoe.eval.records import Prediction

PRIMARY = "acc@0.5"
IOU_THRESHOLD = 0.5


def sample_iou(p: Prediction) -> float | None:
    """The sample's IoU, or None when the prediction cannot be parsed into boxes."""
    from skymoe.data.boxes import parse_boxes

    if not p.gt_boxes:
        raise SkyMoEDataError("grounding sample has no true box", record=p.id, field="gt_boxes")
    if not p.image_size:
        raise SkyMoEDataError("grounding sample needs the image size to read boxes", record=p.id, field="image_size")
    parsed = parse_boxes(p.prediction, tuple(p.image_size))
    if parsed.failed or not parsed.boxes:
        return None
    truths = [Box(*b) for b in p.gt_boxes]
    return sum(max(t.iou(b) for b in parsed.boxes) for t in truths) / len(truths)


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
