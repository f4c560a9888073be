"""Where single-user servers run: the Backend interface and its implementations."""

from .base import Backend, LaunchRequest
from .local import LocalBackend

__all__ = ["Backend", "LaunchRequest", "LocalBackend"]
