"""Readers: one small module per native dataset format, each returning :class:`SampleList`.

Every reader takes ``on_error="raise"|"skip"``. ``raise`` stops at the first
bad record with a :class:`~skymoe.errors.DataError` naming the
file, the record and the field. ``skip`` drops the record, records it in
``SampleList.skipped`` (record -> reason) and logs one warning with the count
when the reader finishes. Records the dataset itself marks as unused (RSVQA's
``active: false``) are not errors: they are counted in ``SampleList.excluded``.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from skymoe.data.schema import Sample
from skymoe.errors import DataError

ON_ERROR = ("raise", "skip")
logger = logging.getLogger("skymoe.data")


class SampleList(list):
    """A list of samples plus what was left out: ``skipped`` (record -> reason) and ``excluded`` counts."""

    def __init__(self, samples=(), *, skipped: dict[str, str] | None = None, excluded: Counter | None = None):
        super().__init__(samples)
        self.skipped: dict[str, str] = dict(skipped or {})
        self.excluded: Counter = Counter(excluded or {})


class Collector:
    """Collects a reader's samples under an ``on_error`` policy; :meth:`result` reports the skips."""

    def __init__(self, source: str | Path, on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.source, self.on_error = str(source), on_error
        self.samples = SampleList()

    def add(self, build, record: str) -> None:
        """Append ``build()`` (a Sample, validated here); a DataError is raised or counted as a skip."""
        try:
            sample: Sample = build()
            sample.validate()
        except DataError as exc:
            if self.on_error == "raise":
                if exc.record is None:  # name the record when the failing helper could not
                    raise DataError(str(exc), record=record) from exc
                raise
            self.samples.skipped[record] = str(exc)
            return
        if sample.image and not Path(sample.image).is_absolute():
            # absolute: a sample stays valid whatever the working directory and wherever write_jsonl puts it
            sample.image = str(Path(sample.image).resolve())
        self.samples.append(sample)

    def exclude(self, reason: str, n: int = 1) -> None:
        self.samples.excluded[reason] += n

    def result(self) -> SampleList:
        if self.samples.skipped:
            first = next(iter(self.samples.skipped.items()))
            logger.warning(
                "%s: skipped %d bad record(s), kept %d; first: %s: %s",
                self.source, len(self.samples.skipped), len(self.samples), *first,
            )
        return self.samples


def load_json(path: Path):
    """Parsed JSON of ``path``; a missing or malformed file is a DataError naming it."""
    import json

    try:
        with Path(path).open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", file=str(path)) from None


def require(record: dict, key: str, *, file: str, record_id) -> object:
    """``record[key]``, or a DataError naming the file, record and missing field."""
    if not isinstance(record, dict) or key not in record:
        raise DataError("missing required field", file=file, record=record_id, field=key)
    return record[key]
