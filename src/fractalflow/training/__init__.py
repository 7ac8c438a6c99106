"""Training: the Trainer loop and its checkpoints."""

from fractalflow.training.trainer import Trainer

__all__ = ["Trainer"]
