"""Secrets kept in files readable only by their owner (0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.chmod(path, 0o600)


def read_or_create_secret(path: Path, nbytes: int = 32, hex_: bool = False) -> str:
    """Read a secret, creating it once (0600) if missing.

    Refuses a secret file that others can read, naming the file and the fix.
    """
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{path} has mode {oct(mode)}; secrets must be 0600: chmod 600 {path}"
            )
        return path.read_text().strip()
    value = secrets.token_hex(nbytes) if hex_ else secrets.token_urlsafe(nbytes)
    write_secret(path, value)
    return value
