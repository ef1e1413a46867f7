"""Errors that stop training with a message saying why and what to do."""


class TrainingError(RuntimeError):
    """Training cannot start or continue."""


class TrainingDivergedError(TrainingError):
    """A loss term became NaN/inf; the last good checkpoint is kept untouched."""


class StageError(TrainingError):
    """The stage cannot start (missing or incompatible stage-1 output, upcycling mismatch)."""
