"""The Training Agent's HTTP API (FastAPI)."""

from training_api.app import create_app

__all__ = ["create_app"]
