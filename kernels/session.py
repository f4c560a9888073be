"""What a notebook runs on: profile, limits, devices and the database role."""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class SessionInfo:
    """The limits and services of the current server, as the spawner set them."""

    profile: str
    cpu_limit: int
    cores: list[int]
    memory_limit_bytes: int | None
    memory_enforced_by: str
    cpu_enforced_by: str
    gpus: list[str]
    kernel_device: str
    database_url_set: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def _repr_markdown_(self) -> str:
        mem = (
            f"{self.memory_limit_bytes / 1024**3:.1f} GiB"
            if self.memory_limit_bytes
            else "unlimited"
        )
        rows = [
            ("Profile", self.profile),
            ("CPUs", f"{self.cpu_limit} (cores {', '.join(map(str, self.cores))})"),
            ("Memory", f"{mem} (enforced by {self.memory_enforced_by})"),
            ("CPU pinning", self.cpu_enforced_by),
            ("GPUs", ", ".join(self.gpus) or "none"),
            ("Kernel device", self.kernel_device),
            ("Database", "DESILAB_DATABASE_URL is set" if self.database_url_set else "not set"),
        ]
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _cgroup_memory_limit() -> int | None:
    for group in filter(None, os.environ.get("DESILAB_CGROUP", "").split(":")):
        for name in ("memory.max", "memory.limit_in_bytes"):
            path = Path(group) / name
            if path.exists():
                text = path.read_text().strip()
                return None if text == "max" else int(text)
    return None


def session_info() -> SessionInfo:
    """Read the profile and its limits from the environment and the kernel."""
    env = os.environ
    rlimit = resource.getrlimit(resource.RLIMIT_AS)[0]
    memory = _cgroup_memory_limit()
    if memory is None and rlimit != resource.RLIM_INFINITY:
        memory = rlimit
    return SessionInfo(
        profile=env.get("DESILAB_PROFILE", "none (not started by desilab)"),
        cpu_limit=int(env.get("DESILAB_CPU_LIMIT", len(os.sched_getaffinity(0)))),
        cores=sorted(os.sched_getaffinity(0)),
        memory_limit_bytes=memory,
        memory_enforced_by=env.get("DESILAB_LIMITS_MEMORY", "none"),
        cpu_enforced_by=env.get("DESILAB_LIMITS_CPU", "none"),
        gpus=[g for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g],
        kernel_device=env.get("DESILAB_KERNEL_DEVICE", "unknown"),
        database_url_set=bool(env.get("DESILAB_DATABASE_URL")),
    )
