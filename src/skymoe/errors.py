"""The errors SkyMoE raises for input a user can fix; the bottom layer, imported by every other.

Each kind names where the problem is (file, record, field) and what was expected. The CLI
prints any :class:`SkyMoEError` as one line without a traceback, and the server answers it
with a 400. They are ValueErrors: bad input is a bad value, and callers that catch
ValueError (argument parsing, request validation) keep catching them.
"""
from __future__ import annotations

from typing import Any


class SkyMoEError(ValueError):
    """Bad input; the message says where (file, record, field) and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, record: Any = None, field: str | None = None):
        self.file, self.record, self.field = file, record, field
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"record {record}" if record is not None else "",
                f"field '{field}'" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(SkyMoEError):
    """An invalid setting: a key of a training config or eval suite, a command-line option or a request parameter."""


class DataError(SkyMoEError):
    """Bad input data: a dataset file, a record, an image, a predictions file."""


class AssetError(SkyMoEError):
    """An asset is unknown, missing, corrupt or could not be fetched; the message says how to fix it."""


class ModelFolderError(SkyMoEError):
    """A model folder (or its config.json) is missing, incomplete or cannot be loaded."""
