"""The search service: a FastAPI app and web page over a retrieval index."""

from medtriad.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
