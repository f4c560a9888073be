"""desilab.kernels: kernelspecs per profile and kernel start-up."""

from .launch import apply_profile
from .paths import KERNEL_NAMES, THREAD_VARIABLES, kernel_env

__all__ = ["KERNEL_NAMES", "THREAD_VARIABLES", "apply_profile", "kernel_env"]
