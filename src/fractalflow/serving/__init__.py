"""The HTTP service: FastAPI app, job queue feeding the InferenceEngine, server-sent events."""

from fractalflow.serving.app import create_app, serve
from fractalflow.serving.config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]
