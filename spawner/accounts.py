"""One system account per hub user, so users cannot read or signal each other.

When the hub runs as root, ``alice`` runs as the system account ``desilab-alice``
(the prefix is configurable). Names are made safe for ``useradd``; a name that
had to be changed, or whose account is taken, gets a short hash suffix. The
mapping is kept in a registry file so an account is never handed to a second
person: deleting a hub user retires its account for good.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

MAX_NAME = 32  # useradd's limit


@dataclass(frozen=True)
class Account:
    """A user's system account."""

    name: str
    uid: int
    gid: int


def isolation_available() -> bool:
    """True when the hub may create accounts and switch to them (it runs as root)."""
    return os.geteuid() == 0


class SystemAccounts(LoggingConfigurable):
    """Create, look up and retire the system accounts of hub users."""

    prefix = Unicode(
        "desilab-",
        help="Prefix of the system accounts created for hub users (desilab-alice).",
    ).tag(config=True)

    registry = Unicode(
        help="JSON file mapping hub users to accounts. Default: <DESILAB_HOME>/accounts.json.",
    ).tag(config=True)

    @default("registry")
    def _registry_default(self) -> str:
        from ..hub.cli import default_home

        return str(default_home() / "accounts.json")

    def _load(self) -> dict:
        path = Path(self.registry)
        if path.exists():
            return json.loads(path.read_text())
        return {"active": {}, "retired": []}

    def _save(self, data: dict) -> None:
        path = Path(self.registry)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        tmp.replace(path)

    def candidate_names(self, username: str):
        """Account names to try for ``username``, the plain one first when it is safe."""
        safe = re.sub(r"[^a-z0-9_-]+", "-", username.lower()).strip("-_") or "user"
        plain = (self.prefix + safe)[:MAX_NAME]
        if plain == self.prefix + username:
            yield plain
        for n in range(1000):
            digest = hashlib.sha1(f"{username}\0{n}".encode()).hexdigest()[:6]
            yield (self.prefix + safe)[: MAX_NAME - 7] + "-" + digest

    @staticmethod
    def _exists(name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def account_for(self, username: str, home: Path) -> Account:
        """The account of ``username``, created (with ``home`` as its home) if needed."""
        data = self._load()
        name = data["active"].get(username)
        if name is None:
            taken = set(data["retired"]) | set(data["active"].values())
            name = next(
                n for n in self.candidate_names(username) if n not in taken and not self._exists(n)
            )
            self._create(name, home)
            data["active"][username] = name
            self._save(data)
            self.log.info("Created system account %s for hub user %s", name, username)
        entry = pwd.getpwnam(name)
        return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    def _create(self, name: str, home: Path) -> None:
        cmd = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "desilab user",
            name,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"could not create system account {name}: {result.stderr.strip()}")

    def retire(self, username: str) -> str | None:
        """Lock ``username``'s account and never give it to anyone again."""
        data = self._load()
        name = data["active"].pop(username, None)
        if name is None:
            return None
        data["retired"].append(name)
        self._save(data)
        subprocess.run(
            ["usermod", "--lock", "--expiredate", "1", name], capture_output=True, timeout=60
        )
        self.log.info("Retired system account %s of deleted hub user %s", name, username)
        return name


def make_traversable(path: Path) -> list[Path]:
    """Give "others" search permission (o+x, not read) on every folder above ``path``.

    User accounts must reach their homes and the Python installation, which may sit
    below a private folder such as /root (pyenv). Only the execute bit is added:
    nobody can list those folders. Returns the folders changed.
    """
    changed = []
    path = Path(path).resolve()
    for folder in [*reversed(path.parents), path] if path.is_dir() else reversed(path.parents):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
            changed.append(folder)
    return changed
