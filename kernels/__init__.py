"""desilab.kernels: kernelspecs per profile and kernel start-up."""

from .launch import apply_profile
from .paths import KERNEL_NAMES, THREAD_VARIABLES, kernel_env
from .session import SessionInfo, session_info

__all__ = [
    "KERNEL_NAMES",
    "THREAD_VARIABLES",
    "SessionInfo",
    "apply_profile",
    "kernel_env",
    "session_info",
]
