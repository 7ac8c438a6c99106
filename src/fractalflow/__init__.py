"""fractalflow: a small, fast, frugal pixel-space text-to-image engine."""

from fractalflow.config import FractalConfig, TrainConfig, model_preset
from fractalflow.generation import GenerationConfig
from fractalflow.model import Conditioning, FractalTransformer
from fractalflow.pipeline import FractalFlowPipeline, GenerationResult

__version__ = "0.1.0"

__all__ = [
    "Conditioning",
    "FractalConfig",
    "FractalFlowPipeline",
    "FractalTransformer",
    "GenerationConfig",
    "GenerationResult",
    "TrainConfig",
    "model_preset",
    "__version__",
]
