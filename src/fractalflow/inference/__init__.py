"""Running a model well on the machine at hand: profiles, precision, quantization, batching."""

from fractalflow.inference.engine import GenerationCancelled, GenerationRequest, InferenceEngine
from fractalflow.inference.profiles import PROFILES, DeviceReading, InferenceProfile, auto_profile, get_profile

__all__ = [
    "PROFILES",
    "DeviceReading",
    "GenerationCancelled",
    "GenerationRequest",
    "InferenceEngine",
    "InferenceProfile",
    "auto_profile",
    "get_profile",
]
