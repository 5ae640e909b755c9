"""A read-only local web dashboard over a workspace's results (``autoresearch dashboard``)."""

from autoresearch.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
