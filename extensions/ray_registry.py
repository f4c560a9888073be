"""The per-user registry of local Ray clusters and the process helpers around it.

Each cluster is a folder ``<registry>/<id>/`` (mode 0700, default
``~/.desilab/ray/``) holding

- ``spec.json``: what to run, written once by the launcher;
- ``state.json``: what runs, written only by the cluster's supervisor;
- ``control.json``: what any notebook asks for (workers, stop, idle timeout);
- ``supervisor.log`` and ``node-<n>.log``: output of the supervisor and of ``ray start``.

Every process of a cluster carries ``DESILAB_RAY_CLUSTER=<id>`` in its environment
(Ray's processes inherit it from ``ray start``, its workers from the raylet), so
the whole cluster can be found and killed even after its parents are gone.
Writes are atomic (temporary file + rename); ``control.json`` is read-modified-
written under an ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

MARKER = "DESILAB_RAY_CLUSTER"


def default_registry() -> Path:
    return Path.home() / ".desilab" / "ray"


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_control(folder: Path, **command: Any) -> dict[str, Any]:
    """Append ``command`` (e.g. ``workers=3``, ``stop=True``) to control.json.

    Commands get increasing ``seq`` numbers; the supervisor applies them in order
    and reports the last one applied as ``applied_seq`` in state.json. Returns the
    command with its ``seq``.
    """
    with locked(folder):
        control = read_json(folder / "control.json")
        seq = int(control.get("seq", 0)) + 1
        command = {"seq": seq, **command}
        commands = (control.get("commands") or [])[-49:] + [command]
        write_json(folder / "control.json", {"seq": seq, "commands": commands})
    return command


def pending_commands(folder: Path, applied: int) -> list[dict[str, Any]]:
    """Commands of control.json newer than ``applied``, oldest first."""
    commands = read_json(folder / "control.json").get("commands") or []
    return [c for c in commands if int(c.get("seq", 0)) > applied]


def cluster_dirs(registry: Path) -> list[Path]:
    if not registry.is_dir():
        return []
    return sorted(p for p in registry.iterdir() if p.is_dir() and (p / "spec.json").exists())


def short_temp_root(registry: Path, cluster_id: str, limit: int = 40) -> Path:
    """A private Ray temp dir short enough for Ray's unix sockets (107 bytes in all).

    Ray puts sockets at ``<temp>/session_<date>_<pid>/sockets/plasma_store``
    (about 65 bytes below ``<temp>``). Under the registry when that path is short,
    else ``/tmp/ray-<uid>/<id>``; the parent must be ours and 0700, else a fresh
    ``mkdtemp`` is used.
    """
    candidate = registry / cluster_id / "r"
    if len(str(candidate)) <= limit:
        return ensure_private_dir(candidate)
    parent = Path(f"/tmp/ray-{os.getuid()}")
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        st = parent.lstat()
        if st.st_uid == os.getuid() and not parent.is_symlink():
            os.chmod(parent, 0o700)
            return ensure_private_dir(parent / cluster_id)
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"ray{cluster_id}-", dir="/tmp"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True if ``pid`` runs and (when given) started at ``create_time`` (no pid reuse)."""
    if not pid:
        return False
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - float(create_time)) < 0.5
    except (psutil.Error, ValueError):
        return False


def identity(pid: int | None = None) -> dict[str, Any]:
    p = psutil.Process(pid or os.getpid())
    return {"pid": p.pid, "create_time": p.create_time()}


def marked_processes(cluster_id: str, exclude: set[int] | None = None) -> list[psutil.Process]:
    """Our processes whose environment carries ``DESILAB_RAY_CLUSTER=<cluster_id>``."""
    exclude = exclude or set()
    needle = f"{MARKER}={cluster_id}".encode()
    uid = os.getuid()
    found = []
    for p in psutil.process_iter(["uids"]):
        if p.pid in exclude or p.pid == os.getpid():
            continue
        try:
            if uid != 0 and p.info["uids"] and p.info["uids"].real != uid:
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                env = f.read()
        except (OSError, psutil.Error):
            continue
        if needle + b"\0" in env or env.endswith(needle):
            found.append(p)
    return found


def kill_all(procs: list[psutil.Process], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error, OSError):
            p.send_signal(sig)


def sweep(
    cluster_id: str,
    *,
    also: list[psutil.Process] | None = None,
    exclude: set[int] | None = None,
    timeout: float = 10.0,
) -> list[int]:
    """Kill every process of ``cluster_id`` (marker or ``also``) and wait until gone.

    Returns the pids still alive after ``timeout`` (normally none).
    """
    deadline = time.monotonic() + timeout
    extra = list(also or [])
    while True:
        procs = {p.pid: p for p in marked_processes(cluster_id, exclude)}
        for p in extra:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    procs.setdefault(p.pid, p)
        if not procs:
            return []
        kill_all(list(procs.values()))
        _, alive = psutil.wait_procs(list(procs.values()), timeout=0.5)
        alive = [p for p in alive if _not_zombie(p)]
        if not alive and not marked_processes(cluster_id, exclude):
            return []
        if time.monotonic() > deadline:
            return [p.pid for p in alive]


def _not_zombie(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path, lines: int = 15, width: int = 2000) -> str:
    """The last lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    out = "\n".join(text.strip().splitlines()[-lines:])
    return out[-width:]
