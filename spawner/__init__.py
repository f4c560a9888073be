"""desilab.spawner: ProfileSpawner, profiles, allocators and backends."""

from .allocators import CoreAllocator, GPUAllocator, NoGPUFree
from .backends import Backend, LaunchRequest, LocalBackend
from .profiles import Profile, ProfileError, default_profiles, parse_profiles
from .spawner import ProfileSpawner, SpawnRefused

__all__ = [
    "Backend",
    "CoreAllocator",
    "GPUAllocator",
    "LaunchRequest",
    "LocalBackend",
    "NoGPUFree",
    "Profile",
    "ProfileError",
    "ProfileSpawner",
    "SpawnRefused",
    "default_profiles",
    "parse_profiles",
]
