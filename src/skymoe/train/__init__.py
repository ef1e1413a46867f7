"""Two-stage training on accelerate: ``train(cfg, output_dir, resume=False) -> TrainResult``."""
from skymoe.train.errors import StageError, TrainingDivergedError, TrainingError
from skymoe.train.trainer import TrainResult, train

__all__ = ["train", "TrainResult", "TrainingError", "TrainingDivergedError", "StageError"]
