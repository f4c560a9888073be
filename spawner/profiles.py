"""Server profiles: what a user may ask for, and why a request is refused.

A profile is configured as a plain dict (``c.ProfileSpawner.profiles``) and
parsed into a :class:`Profile`. Choosing one is never a silent fallback: an
unknown, forbidden or unavailable profile raises :class:`ProfileError` whose
message names the reason and the alternatives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.traitlets import ByteSpecification

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

KNOWN_KEYS = {
    "slug",
    "display_name",
    "description",
    "cpus",
    "memory",
    "gpus",
    "groups",
    "denied_groups",
    "default",
    "environment",
    "kubespawner_override",
}


class ProfileError(ValueError):
    """A profile that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class Profile:
    """One entry of the profile list.

    Attributes
    ----------
    slug
        Identifier used in forms and the REST API (``{"profile": slug}``).
    display_name, description
        Shown in the options form.
    cpus
        Number of cores, or ``None`` for every core of the machine.
    memory
        Memory limit in bytes.
    gpus
        Number of whole GPUs assigned exclusively.
    groups
        Groups allowed to use the profile; empty means everyone.
    denied_groups
        Groups refused the profile even if also in ``groups``.
    default
        Preselected in the form and used when no profile is requested.
    environment
        Extra environment variables for the server.
    kubespawner_override
        Passed to KubeSpawner by the kubernetes backend.
    """

    slug: str
    display_name: str
    description: str = ""
    cpus: int | None = 1
    memory: int = 2 * 1024**3
    gpus: int = 0
    groups: tuple[str, ...] = ()
    denied_groups: tuple[str, ...] = ()
    default: bool = False
    environment: Mapping[str, str] = field(default_factory=dict)
    kubespawner_override: Mapping[str, Any] = field(default_factory=dict)

    def effective_cpus(self, ncores: int) -> int:
        """Cores this profile gets on a machine with ``ncores`` cores."""
        if self.cpus is None:
            return ncores
        return max(1, min(self.cpus, ncores))

    def refusal(self, user_groups: Iterable[str]) -> str | None:
        """Why a user in ``user_groups`` may not use this profile, or None."""
        user_groups = set(user_groups)
        denied = sorted(user_groups & set(self.denied_groups))
        if denied:
            return f"profile '{self.slug}' is not available to members of group '{denied[0]}'"
        if self.groups and not user_groups & set(self.groups):
            allowed = ", ".join(f"'{g}'" for g in self.groups)
            return f"profile '{self.slug}' is only available to members of group {allowed}"
        return None

    def describe_limits(self, ncores: int) -> str:
        """Short human description, e.g. ``1 CPU · 2.0 GiB · 1 GPU``."""
        n = self.effective_cpus(ncores)
        parts = [f"{n} CPU" + ("s" if n != 1 else ""), f"{self.memory / 1024**3:.1f} GiB"]
        if self.gpus:
            parts.append(f"{self.gpus} GPU" + ("s" if self.gpus != 1 else ""))
        return " · ".join(parts)


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a JupyterHub byte specification such as ``'2G'``."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    return int(ByteSpecification().validate(None, value))


def parse_profile(entry: Mapping[str, Any]) -> Profile:
    """Build a :class:`Profile` from one configured dict, naming any error."""
    unknown = set(entry) - KNOWN_KEYS
    slug = entry.get("slug")
    where = f"profile {slug!r}" if slug else "a profile without a slug"
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise ValueError(f"{where}: slug must match {SLUG_RE.pattern}")
    cpus = entry.get("cpus", 1)
    if cpus in ("all", None):
        cpus = None
    elif not isinstance(cpus, int) or cpus < 1:
        raise ValueError(f"{where}: cpus must be a positive integer or 'all', not {cpus!r}")
    gpus = entry.get("gpus", 0)
    if not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"{where}: gpus must be a non-negative integer, not {gpus!r}")
    try:
        memory = parse_memory(entry.get("memory", "2G"))
    except Exception as e:
        raise ValueError(f"{where}: memory {entry.get('memory')!r} is not a size: {e}") from e
    return Profile(
        slug=slug,
        display_name=str(entry.get("display_name", slug)),
        description=str(entry.get("description", "")),
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        groups=tuple(entry.get("groups", ())),
        denied_groups=tuple(entry.get("denied_groups", ())),
        default=bool(entry.get("default", False)),
        environment={str(k): str(v) for k, v in dict(entry.get("environment", {})).items()},
        kubespawner_override=dict(entry.get("kubespawner_override", {})),
    )


def parse_profiles(entries: Iterable[Mapping[str, Any]]) -> list[Profile]:
    """Parse and check a profile list: unique slugs, at most one default."""
    profiles = [parse_profile(e) for e in entries]
    if not profiles:
        raise ValueError("no profiles configured")
    slugs = [p.slug for p in profiles]
    dupes = sorted({s for s in slugs if slugs.count(s) > 1})
    if dupes:
        raise ValueError(f"duplicate profile slugs: {dupes}")
    if sum(p.default for p in profiles) > 1:
        raise ValueError("more than one profile has default=True")
    return profiles


def default_profiles() -> list[dict[str, Any]]:
    """The profiles a fresh install offers."""
    return [
        {
            "slug": "cpu-small",
            "display_name": "CPU small",
            "description": "Notebooks, catalog queries, light analysis.",
            "cpus": 1,
            "memory": "2G",
            "default": True,
        },
        {
            "slug": "cpu-large",
            "display_name": "CPU large",
            "description": "Every core of the machine for batch work and local Ray.",
            "cpus": "all",
            "memory": "8G",
        },
        {
            "slug": "gpu",
            "display_name": "GPU",
            "description": "One exclusive GPU for training models (VAE).",
            "cpus": 4,
            "memory": "16G",
            "gpus": 1,
            "denied_groups": ["students"],
        },
    ]


def machine_cores() -> list[int]:
    """Cores this process may run on (respects the hub's own affinity)."""
    return sorted(os.sched_getaffinity(0))
