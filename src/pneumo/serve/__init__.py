"""The HTTP service: ``create_app(model)`` (FastAPI), run by ``pneumo serve``. Research use only."""

from pneumo.serve.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
