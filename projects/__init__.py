"""desilab.projects: the three research projects and their shared batch runner."""

from .runner import default_workers, ray_address, run_units

__all__ = ["default_workers", "ray_address", "run_units"]
