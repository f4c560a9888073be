"""The small interface between :class:`ProfileSpawner` and where servers run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets.config import LoggingConfigurable


@dataclass
class LaunchRequest:
    """Everything a backend needs to start one single-user server.

    Attributes
    ----------
    owner
        ``user`` or ``user/server``: the key allocations are held under.
    username
        The hub user's name.
    cmd
        The server command line (``jupyterhub-singleuser ...``).
    env
        The complete environment of the server.
    cwd
        Working directory (the user's home).
    ip, port
        Where the server listens.
    cpus
        Core ids the server is pinned to.
    memory_bytes
        Memory limit.
    gpus
        GPU tokens (CUDA_VISIBLE_DEVICES) held exclusively.
    log_path
        Where the server's stdout and stderr go.
    profile
        The profile slug, for backends that map it to something (Kubernetes).
    overrides
        Backend-specific settings from the profile (``kubespawner_override``).
    uid, gid
        The user's system account (local backend, hub running as root); None
        runs the server as the hub's own account.
    """

    owner: str
    username: str
    cmd: list[str]
    env: dict[str, str]
    cwd: str
    ip: str
    port: int
    cpus: tuple[int, ...]
    memory_bytes: int
    gpus: list[str] = field(default_factory=list)
    log_path: Path | None = None
    profile: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None


class Backend(LoggingConfigurable):
    """Starts, watches and stops one server; one instance per spawner."""

    async def start(self, request: LaunchRequest) -> str:
        """Launch the server and return its URL (it may not answer yet)."""
        raise NotImplementedError

    async def poll(self) -> int | None:
        """None while the server runs, else its exit status (0 if unknown)."""
        raise NotImplementedError

    async def stop(self, now: bool = False) -> None:
        """Stop the server and everything it started; return when it is gone."""
        raise NotImplementedError

    def limits_report(self) -> dict[str, str]:
        """Which mechanisms enforce the limits (exported to the server)."""
        return {}

    def get_state(self) -> dict[str, Any]:
        """What must survive a hub restart."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` output."""

    def clear_state(self) -> None:
        """Forget the server (after it stopped)."""
