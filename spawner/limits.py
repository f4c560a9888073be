"""Enforce a single-user server's memory and core limits on the local backend.

The hub calls :meth:`LimitEnforcer.prepare`; the :class:`LimitPlan` it returns is
applied in the forked child (:meth:`LimitPlan.preexec`), persisted in the spawner's
state, and :meth:`LimitPlan.release` kills what the server left behind and removes
its groups. Mechanisms, per resource, best first: cgroup v2, cgroup v1, else
``RLIMIT_AS`` and CPU affinity. Groups live below the hub's *own* cgroup, so they
nest inside whatever limits the hub itself runs under.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import resource
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from traitlets import Enum, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

_log = logging.getLogger(__name__)

#: Controllers a cgroup mechanism needs: memory for the limit, cpuset for the cores.
NEEDED = ("memory", "cpuset")
_V1_KNOB = {"memory": "memory.limit_in_bytes", "cpuset": "cpuset.cpus"}


class LimitsUnavailable(RuntimeError):
    """A forced mechanism cannot be used, or a server's cgroup could not be set up."""


@dataclass(frozen=True)
class ResourceLimits:
    """What one server may use.

    Attributes
    ----------
    cpus
        Core ids to pin the server to (sorted, unique); empty means no pinning.
    memory_bytes
        Memory limit in bytes; None means unlimited.
    """

    cpus: tuple[int, ...] = ()
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        cpus = tuple(sorted({int(c) for c in self.cpus}))
        if any(c < 0 for c in cpus):
            raise ValueError(f"core ids must be >= 0, got {self.cpus!r}")
        object.__setattr__(self, "cpus", cpus)
        if self.memory_bytes is not None and int(self.memory_bytes) <= 0:
            raise ValueError(f"memory_bytes must be positive or None, got {self.memory_bytes!r}")


def cgroup_name(name: str) -> str:
    """Escape ``name`` into one cgroup directory name, injectively.

    Letters, digits and ``-`` stay; every other byte becomes ``_xx`` (``_`` too, so
    escapes cannot collide; ``.`` too, so no name shadows a file like ``memory.max``).
    """
    if not name:
        raise ValueError("a cgroup name cannot be empty")
    out = re.sub(r"[^A-Za-z0-9-]+", lambda m: "".join(f"_{b:02x}" for b in m[0].encode()), name)
    if out == "tasks":  # the one v1 control file without a dot
        out = "_74asks"
    if len(out) > 200:  # NAME_MAX is 255; a digest keeps long names unique
        out = out[:180] + "_" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return out


class Hierarchy(NamedTuple):
    """A mounted cgroup hierarchy and this process's own group in it."""

    version: int
    controllers: frozenset[str]  # v1: the mount's controllers; v2: empty (read from files)
    own_dir: str


def hierarchies(proc_self: str | os.PathLike = "/proc/self") -> list[Hierarchy]:
    """The cgroup hierarchies mounted here, from ``mountinfo`` and ``cgroup`` in ``proc_self``.

    Missing files (no /proc, no cgroups) give an empty list.
    """
    try:
        with open(os.path.join(proc_self, "cgroup")) as f:
            membership = [line.rstrip("\n").split(":", 2) for line in f if line.strip()]
        with open(os.path.join(proc_self, "mountinfo")) as f:
            mounts = f.read().splitlines()
    except OSError:
        return []
    v2_path = next((p for hid, c, p in membership if hid == "0" and c == ""), None)
    v1_path = {c: p for hid, cs, p in membership if hid != "0" for c in cs.split(",") if c}
    found: list[Hierarchy] = []
    for line in mounts:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        # mountinfo escapes space, tab, newline and backslash as \ooo
        root, point = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), x) for x in lf[3:5])
        ctrls = frozenset(o for o in rf[2].split(",") if o in v1_path and rf[0] == "cgroup")
        path = v2_path if rf[0] == "cgroup2" else v1_path[min(ctrls)] if ctrls else None
        if path is None:
            continue
        if root != "/":  # a bind mount of a subtree: our path must lie inside it
            if path != root and not path.startswith(root + "/"):
                continue
            path = path[len(root) :]
        version = 2 if rf[0] == "cgroup2" else 1
        if any(h.version == version and h.controllers == ctrls for h in found):
            continue  # mounted twice: the first mount wins
        found.append(Hierarchy(version, ctrls, os.path.normpath(f"{point}/{path.lstrip('/')}")))
    return found


def _read_words(path: str) -> set[str]:
    try:
        with open(path) as f:
            # lstrip("+"): fake trees in tests keep what was written ("+memory")
            return {w.lstrip("+") for w in f.read().split()}
    except OSError:
        return set()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _enable(group: str, controllers: set[str]) -> None:
    """Enable ``controllers`` for ``group``'s children, as far as the kernel allows."""
    path = os.path.join(group, "cgroup.subtree_control")
    missing = sorted(controllers - _read_words(path))
    try:
        if missing:
            _write(path, " ".join("+" + c for c in missing))
    except OSError:  # one refused controller fails the whole write: try one by one
        for c in missing:
            with contextlib.suppress(OSError):
                _write(path, "+" + c)


@dataclass
class LimitPlan:
    """One server's limits, set up in the hub and applied in its child.

    Attributes
    ----------
    name
        The server's name as given to :meth:`LimitEnforcer.prepare`.
    limits
        The limits enforced.
    mechanism
        ``{"memory": ..., "cpu": ...}`` as :meth:`LimitEnforcer.detect` reports them.
    cgroups
        The server's group directories, one per hierarchy used.
    rlimit_as
        ``RLIMIT_AS`` for the child (rlimit mechanism only).
    token
        Exported as ``DESILAB_LIMITS_ID``; finds the processes when no cgroup does.
    """

    name: str
    limits: ResourceLimits
    mechanism: dict[str, str]
    cgroups: tuple[str, ...] = ()
    rlimit_as: int | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    def preexec(self) -> None:
        """Apply the limits to the calling process; run between fork and exec.

        Call it before dropping privileges (joining a group needs write access to
        its ``cgroup.procs``). No logging, locks or imports: the child of a threaded
        hub may inherit them held. Errors propagate, so the spawn fails rather than
        running a server without its limits.
        """
        pid = str(os.getpid()).encode()
        for group in self.cgroups:
            fd = os.open(group + "/cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if self.limits.cpus:  # under a cpuset too: the exec'd program sees it at once
            os.sched_setaffinity(0, self.limits.cpus)
        if self.rlimit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.rlimit_as, self.rlimit_as))

    def env(self) -> dict[str, str]:
        """What enforces the limits, for the server's environment.

        ``DESILAB_CGROUP`` joins the group directories with ``os.pathsep`` (empty
        without cgroups).
        """
        return {
            "DESILAB_LIMITS_MEMORY": self.mechanism["memory"],
            "DESILAB_LIMITS_CPU": self.mechanism["cpu"],
            "DESILAB_CGROUP": os.pathsep.join(self.cgroups),
            "DESILAB_LIMITS_ID": self.token,
        }

    def pids(self) -> list[int]:
        """Processes still in the plan's groups (sub-groups included).

        Without cgroups: processes whose environment holds this plan's
        ``DESILAB_LIMITS_ID`` (best effort: a process may clear its environment).
        """
        found: set[int] = set()
        for group in self.cgroups:
            for root, _dirs, _files in os.walk(group):
                with contextlib.suppress(OSError), open(f"{root}/cgroup.procs") as f:
                    found.update(int(p) for p in f.read().split())
        if not self.cgroups:
            needle = f"DESILAB_LIMITS_ID={self.token}".encode()
            for entry in filter(str.isdigit, os.listdir("/proc")):
                # OSError: the process is gone, or belongs to another user
                with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(entry))
        found.discard(os.getpid())
        return sorted(found)

    def kill_remaining(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process of the plan; return how many were signalled.

        SIGKILL is repeated for a few rounds, so processes forked meanwhile die too.
        """
        signalled: set[int] = set()
        for _ in range(5 if sig == signal.SIGKILL else 1):
            pending = [p for p in self.pids() if p not in signalled]
            if not pending:
                break
            for pid in pending:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
                except PermissionError as e:
                    _log.warning("cannot signal pid %d of %s: %s", pid, self.name, e)
                signalled.add(pid)
            time.sleep(0.02)
        return len(signalled)

    def release(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the plan's groups; idempotent, never raises."""
        try:
            self.kill_remaining()
        except Exception:  # a failed kill must not keep the groups from being tried
            _log.exception("killing the processes of %s failed", self.name)
        deadline = time.monotonic() + timeout
        for group in self.cgroups:
            for sub in [r for r, _d, _f in os.walk(group, topdown=False)]:
                while True:
                    try:
                        os.rmdir(sub)
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        # EBUSY: killed processes not yet gone; give the kernel a moment
                        if e.errno == errno.EBUSY and time.monotonic() < deadline:
                            with contextlib.suppress(Exception):
                                self.kill_remaining()
                            time.sleep(0.05)
                            continue
                        _log.warning("could not remove cgroup %s of %s: %s", sub, self.name, e)
                    break

    def to_state(self) -> dict[str, Any]:
        """A JSON-serializable dict that :meth:`from_state` turns back into the plan."""
        return {
            "version": 1,
            "name": self.name,
            "cpus": list(self.limits.cpus),
            "memory_bytes": self.limits.memory_bytes,
            "mechanism": dict(self.mechanism),
            "cgroups": list(self.cgroups),
            "rlimit_as": self.rlimit_as,
            "token": self.token,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LimitPlan:
        """Rebuild a plan from :meth:`to_state` output (e.g. after a hub restart)."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported limit plan state version {state.get('version')!r}")
        try:
            return cls(
                name=str(state["name"]),
                limits=ResourceLimits(tuple(state["cpus"]), state["memory_bytes"]),
                mechanism={k: str(state["mechanism"][k]) for k in ("memory", "cpu")},
                cgroups=tuple(str(g) for g in state["cgroups"]),
                rlimit_as=state["rlimit_as"],
                token=str(state["token"]),
            )
        except KeyError as e:
            raise ValueError(f"limit plan state lacks {e.args[0]!r}: {state!r}") from None


class LimitEnforcer(LoggingConfigurable):
    """Chooses the limit mechanism and sets up each server's cgroups."""

    mechanism = Enum(
        ["auto", "cgroup-v2", "cgroup-v1", "rlimit"],
        default_value="auto",
        help="""How to enforce memory and core limits. 'auto': per resource, cgroup v2
        where a writable v2 hierarchy offers the controller (memory, cpuset), else
        cgroup v1 where that controller is mounted writable, else RLIMIT_AS (memory)
        and sched_setaffinity (cores). Forcing 'cgroup-v2' or 'cgroup-v1' needs both
        the memory and cpuset controllers and fails with the reason otherwise.""",
    ).tag(config=True)

    cgroup_parent = Unicode(
        "desilab",
        help="""Name of the group created below the hub's own cgroup (in each
        hierarchy used) to hold one group per server.""",
    ).tag(config=True)

    proc_self = Unicode(
        "/proc/self",
        help="""Where 'mountinfo' and 'cgroup' are read to find the hierarchies and
        the hub's own groups. Only tests change it (to a fake tree).""",
    ).tag(config=True)

    @validate("cgroup_parent")
    def _check_parent(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise TraitError(f"cgroup_parent must be one name of [A-Za-z0-9_-], not {value!r}")
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._created: list[str] = []

    def _make_parent(self, own: str) -> str:
        parent = os.path.join(own, self.cgroup_parent)
        if not os.path.isdir(parent):
            os.mkdir(parent)
            self._created.append(parent)
        return parent

    def _probe_v2(self, hs: list[Hierarchy]) -> tuple[str | None, set[str], str]:
        """(parent group, usable controllers, why not) for cgroup v2."""
        own = next((h.own_dir for h in hs if h.version == 2), None)
        if own is None:
            return None, set(), "no cgroup2 hierarchy is mounted"
        available = _read_words(f"{own}/cgroup.controllers") & set(NEEDED)
        if not available:
            return None, set(), f"{own}/cgroup.controllers offers neither memory nor cpuset"
        _enable(own, available)
        enabled = _read_words(f"{own}/cgroup.subtree_control") & available
        if not enabled:
            # the kernel's "no internal processes" rule: a group holding the hub can't delegate
            why = f"cannot enable {'+'.join(sorted(available))} in {own}/cgroup.subtree_control"
            return None, set(), why + " (run the hub in a leaf of a delegated subtree)"
        try:
            parent = self._make_parent(own)
        except OSError as e:
            return None, set(), f"cannot create {own}/{self.cgroup_parent}: {e.strerror}"
        _enable(parent, enabled)
        usable = _read_words(f"{parent}/cgroup.subtree_control") & enabled
        return parent, usable, f"only {sorted(usable)} could be enabled in {parent}"

    def _probe_v1(self, hs: list[Hierarchy], controller: str) -> tuple[str | None, str]:
        """(parent group, why not) for one cgroup v1 controller."""
        own = next((h.own_dir for h in hs if h.version == 1 and controller in h.controllers), None)
        if own is None:
            return None, f"no cgroup v1 hierarchy with the {controller} controller is mounted"
        try:
            parent = self._make_parent(own)
            # a v1 cpuset group accepts no task until it has cpus and mems
            for knob in ("cpuset.cpus", "cpuset.mems") if controller == "cpuset" else ():
                if not _read_words(f"{parent}/{knob}"):
                    with open(f"{own}/{knob}") as f:
                        _write(f"{parent}/{knob}", f.read().strip())
        except OSError as e:
            return None, f"cannot set up {own}/{self.cgroup_parent}: {e.strerror}"
        if not os.access(f"{parent}/{_V1_KNOB[controller]}", os.W_OK):
            return None, f"{parent}/{_V1_KNOB[controller]} is not writable"
        return parent, ""

    def _choose(self) -> tuple[dict[str, str], dict[str, str]]:
        """Labels per resource and parent group per controller used."""
        mode = self.mechanism
        parents: dict[str, str] = {}
        version: dict[str, str] = {}
        hs = [] if mode == "rlimit" else hierarchies(self.proc_self)
        if mode in ("auto", "cgroup-v2"):
            parent, usable, why = self._probe_v2(hs)
            if mode == "cgroup-v2" and (parent is None or set(NEEDED) - usable):
                raise LimitsUnavailable(f"mechanism 'cgroup-v2' is unavailable: {why}")
            for controller in usable:
                parents[controller], version[controller] = parent, "cgroup-v2"
        # per resource: a hybrid host may offer memory in one hierarchy, cpuset in another
        for controller in NEEDED if mode in ("auto", "cgroup-v1") else ():
            if controller not in parents:
                parent, why = self._probe_v1(hs, controller)
                if parent is None and mode == "cgroup-v1":
                    raise LimitsUnavailable(f"mechanism 'cgroup-v1' is unavailable: {why}")
                if parent is not None:
                    parents[controller], version[controller] = parent, "cgroup-v1"
        labels = {
            "memory": version.get("memory", "rlimit"),
            "cpu": f"{version['cpuset']}-cpuset+affinity" if "cpuset" in version else "affinity",
        }
        return labels, parents

    def detect(self) -> dict[str, str]:
        """Which mechanisms :meth:`prepare` would use now.

        Returns e.g. ``{"memory": "cgroup-v1", "cpu": "cgroup-v1-cpuset+affinity"}``:
        memory is cgroup-v2, cgroup-v1 or rlimit; cpu is cgroup-v2-cpuset+affinity,
        cgroup-v1-cpuset+affinity or affinity. Writability is proven by creating the
        (empty) parent groups, which :meth:`cleanup` removes.

        Raises
        ------
        LimitsUnavailable
            When a forced mechanism cannot be used; the message names what is missing.
        """
        return self._choose()[0]

    def prepare(self, name: str, limits: ResourceLimits) -> LimitPlan:
        """Create and configure the groups of server ``name``; run in the hub.

        Raises
        ------
        ValueError
            When ``limits.cpus`` names cores the hub itself may not use.
        LimitsUnavailable
            When a forced mechanism is unavailable or a group cannot be configured.
        """
        allowed = os.sched_getaffinity(0)
        if set(limits.cpus) - allowed:
            raise ValueError(
                f"cores {sorted(set(limits.cpus) - allowed)} requested for {name!r} are not "
                f"available to the hub (it may use {sorted(allowed)})"
            )
        labels, parents = self._choose()
        groups: list[str] = []
        try:
            for controller in (c for c in NEEDED if c in parents):  # memory's group first
                parent = parents[controller]
                group = os.path.join(parent, cgroup_name(name))
                if group not in groups:  # v2: one group for both controllers
                    self._new_group(group, groups)
                if controller == "memory":
                    self._limit_memory(group, labels["memory"], limits.memory_bytes)
                else:
                    self._limit_cpus(group, parent, labels["cpu"], limits.cpus)
        except OSError as e:
            LimitPlan(name, limits, labels, tuple(groups)).release(timeout=0)
            raise LimitsUnavailable(f"cannot set up the cgroups of {name!r}: {e}") from e
        rlimit_as = None
        if labels["memory"] == "rlimit" and limits.memory_bytes is not None:
            # an unprivileged child cannot raise its hard limit: never ask above it
            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            infinite = hard == resource.RLIM_INFINITY
            rlimit_as = limits.memory_bytes if infinite else min(hard, limits.memory_bytes)
        memory = "unlimited" if limits.memory_bytes is None else f"{limits.memory_bytes >> 20} MiB"
        cores = ",".join(map(str, limits.cpus)) or "all"
        what = (memory, labels["memory"], cores, labels["cpu"], ", ".join(groups) or "none")
        self.log.info("Limits of %s: memory %s via %s, cores %s via %s; cgroups: %s", name, *what)
        return LimitPlan(name, limits, labels, tuple(groups), rlimit_as)

    def _new_group(self, group: str, groups: list[str]) -> None:
        try:
            os.mkdir(group)
        except FileExistsError:
            stale = LimitPlan("stale", ResourceLimits(), {}, (group,)).pids()
            if stale:
                self.log.warning("cgroup %s already holds processes %s", group, stale)
        groups.append(group)

    def _limit_memory(self, group: str, label: str, value: int | None) -> None:
        if label == "cgroup-v2":
            _write(f"{group}/memory.max", "max" if value is None else str(value))
            if os.path.exists(f"{group}/memory.swap.max"):  # swap would exceed the limit
                with contextlib.suppress(OSError):
                    _write(f"{group}/memory.swap.max", "0")
            return
        memsw = f"{group}/memory.memsw.limit_in_bytes"
        has_memsw = os.path.exists(memsw)
        if has_memsw:  # memsw must stay >= the memory limit: lift it before any change
            with contextlib.suppress(OSError):
                _write(memsw, "-1")
        _write(f"{group}/memory.limit_in_bytes", "-1" if value is None else str(value))
        if has_memsw and value is not None:  # swap would exceed the limit
            with contextlib.suppress(OSError):
                _write(memsw, str(value))

    def _limit_cpus(self, group: str, parent: str, label: str, cpus: tuple[int, ...]) -> None:
        value = ",".join(map(str, cpus))
        if label.startswith("cgroup-v1"):  # v1 runs no task with empty cpus or mems
            for knob in ("cpuset.mems",) if value else ("cpuset.mems", "cpuset.cpus"):
                with open(f"{parent}/{knob}") as f:
                    _write(f"{group}/{knob}", f.read().strip())
        if value:
            _write(f"{group}/cpuset.cpus", value)

    def cleanup(self) -> None:
        """Remove the parent groups this enforcer created, where empty; never raises."""
        for parent in reversed(self._created):
            try:
                os.rmdir(parent)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.debug("keeping cgroup %s: %s", parent, e.strerror)
        self._created.clear()
