"""What a conversion produced and what it left out, under the ``on_error`` policy."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from skymoe.data.readers import SampleList
from skymoe.errors import DataError


class Tally:
    """Counts what was read; a bad image raises (``raise``) or is skipped and remembered (``skip``).

    A bad object skips its whole image, not just itself: dropping one object would make the
    image's count answers wrong.
    """

    def __init__(self, on_error: str = "raise"):
        self.on_error = on_error
        self.images = 0
        self.objects = 0
        self.skipped: dict[str, str] = {}  # record -> reason
        self.excluded: Counter = Counter()

    def skip(self, exc: DataError, record: str) -> None:
        if self.on_error == "raise":
            raise exc
        self.skipped[record] = str(exc)


@dataclass
class Converted:
    samples: SampleList
    images: int = 0
    objects: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_tally(cls, samples: list, tally: Tally) -> "Converted":
        out = SampleList(samples, skipped={**tally.skipped}, excluded=tally.excluded)
        return cls(out, tally.images, tally.objects, dict(tally.skipped))

    @classmethod
    def from_samples(cls, samples: SampleList) -> "Converted":
        """A dataset reader's samples: images and objects counted from the samples themselves."""
        images = {s.image for s in samples}
        objects = {(s.image, b.as_tuple()) for s in samples for b in s.boxes}
        return cls(samples, len(images), len(objects), dict(samples.skipped))

    def summary(self, out: str) -> str:
        text = f"wrote {len(self.samples):,} samples from {self.images:,} images ({self.objects:,} objects) to {out}"
        excluded = getattr(self.samples, "excluded", None)
        if excluded:  # not errors: records the data itself marks as unused (RSVQA inactive, chips without labels)
            text += " (left out: " + ", ".join(f"{n:,} {why}" for why, n in excluded.items()) + ")"
        if not self.skipped:
            return text + "; skipped 0"
        reasons = Counter(_reason(r) for r in self.skipped.values())
        first = next(iter(self.skipped.items()))
        why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5))
        return f"{text}; skipped {len(self.skipped):,} ({why}); first: {first[0]}: {first[1]}"


def _reason(message: str) -> str:
    """The reason part of a DataError message (after 'file ..., record ...: ')."""
    return message.rsplit(": ", 1)[-1] if ": " in message else message
