"""Hub-wide bookkeeping of cores and GPUs handed to running servers.

One allocator of each kind lives in the hub process and is shared by every
spawner. Allocation is synchronous (no ``await`` between checking and taking),
so concurrent spawns on the hub's event loop can never take the same GPU. The
allocations themselves are saved in each spawner's state, and
:meth:`GPUAllocator.claim` re-takes them when the hub restarts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from .gpus import GPU
from .profiles import ProfileError

log = logging.getLogger(__name__)


class NoGPUFree(ProfileError):
    """Every GPU is taken; the message says by whom and what to do."""


class GPUAllocator:
    """Exclusive assignment of whole GPUs to owners (``user/server`` keys).

    Parameters
    ----------
    gpus
        The machine's GPU inventory.
    """

    def __init__(self, gpus: Sequence[GPU]):
        self.gpus = tuple(gpus)
        self._owner_of: dict[str, str] = {}

    @property
    def indices(self) -> list[str]:
        """GPU tokens (as used in CUDA_VISIBLE_DEVICES), in inventory order."""
        return [g.index for g in self.gpus]

    def free(self) -> list[str]:
        """GPUs nobody holds."""
        return [i for i in self.indices if i not in self._owner_of]

    def held_by(self, owner: str) -> list[str]:
        """GPUs held by ``owner``."""
        return [i for i in self.indices if self._owner_of.get(i) == owner]

    def allocate(self, owner: str, count: int) -> list[str]:
        """Take ``count`` free GPUs for ``owner``, or raise :class:`NoGPUFree`.

        An owner that already holds GPUs gets those back (a retried spawn must
        not leak the first attempt's devices).
        """
        held = self.held_by(owner)
        if len(held) >= count:
            return held[:count]
        if not self.gpus:
            raise NoGPUFree("no GPU on this machine: choose a CPU profile")
        free = self.free()
        need = count - len(held)
        if len(free) < need:
            users = sorted({o.split("/")[0] for o in self._owner_of.values()})
            raise NoGPUFree(
                f"no GPU free: all {len(self.gpus)} GPUs are in use"
                + (f" (by {', '.join(users)})" if users else "")
                + "; choose a CPU profile or try again when a GPU server stops"
            )
        for index in free[:need]:
            self._owner_of[index] = owner
        return self.held_by(owner)

    def claim(self, owner: str, indices: Sequence[str]) -> list[str]:
        """Re-take GPUs recorded in a spawner's state after a hub restart.

        Returns the indices actually claimed; a GPU that disappeared from the
        inventory or is already held by someone else is logged and skipped.
        """
        claimed = []
        for index in indices:
            current = self._owner_of.get(index)
            if index not in self.indices:
                log.warning("GPU %s of %s is no longer in the inventory", index, owner)
            elif current not in (None, owner):
                log.error(
                    "GPU %s is recorded for both %s and %s; kept %s", index, current, owner, current
                )
            else:
                self._owner_of[index] = owner
                claimed.append(index)
        return claimed

    def release(self, owner: str) -> list[str]:
        """Give back every GPU held by ``owner``."""
        released = self.held_by(owner)
        for index in released:
            del self._owner_of[index]
        return released

    def owners(self) -> dict[str, str]:
        """Snapshot: GPU index -> owner."""
        return dict(self._owner_of)


class CoreAllocator:
    """Choose which cores a server is pinned to: the least-shared ones.

    Cores are not exclusive (a lab oversubscribes CPUs on purpose), but
    spreading servers over the least-used cores keeps two ``cpu-small``
    servers off the same core while another is idle.
    """

    def __init__(self, cores: Sequence[int]):
        self.cores = tuple(cores)
        self._held: dict[str, tuple[int, ...]] = {}

    def load(self) -> Counter:
        """How many servers are pinned to each core."""
        counts = Counter({c: 0 for c in self.cores})
        for cores in self._held.values():
            counts.update(cores)
        return counts

    def allocate(self, owner: str, count: int) -> tuple[int, ...]:
        """Pin ``owner`` to ``count`` of the least-loaded cores."""
        self.release(owner)
        count = max(1, min(count, len(self.cores)))
        load = self.load()
        chosen = sorted(sorted(self.cores, key=lambda c: (load[c], c))[:count])
        self._held[owner] = tuple(chosen)
        return self._held[owner]

    def claim(self, owner: str, cores: Sequence[int]) -> tuple[int, ...]:
        """Record cores from saved state (hub restart), dropping unknown ones."""
        kept = tuple(c for c in cores if c in self.cores)
        if kept:
            self._held[owner] = kept
        return kept

    def release(self, owner: str) -> None:
        """Forget ``owner``'s cores."""
        self._held.pop(owner, None)
