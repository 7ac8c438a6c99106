"""The networks: FractalTransformer and its attention and conditioning parts."""

from fractalflow.model.conditioning import Conditioning
from fractalflow.model.transformer import FractalTransformer

__all__ = ["Conditioning", "FractalTransformer"]
