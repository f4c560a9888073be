"""Kernel start-up: apply the profile's thread and device settings, then run ipykernel.

Used by the ``desilab-cpu`` and ``desilab-gpu`` kernelspecs as
``python -m desilab.kernels.launch {cpu|gpu} -f {connection_file}``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from .paths import THREAD_VARIABLES


def apply_profile(device: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Set thread counts to the CPU limit and the visible devices for ``device``.

    A CPU kernel sees no GPU even on a GPU profile, so a notebook that did not ask
    for the GPU cannot hold it; a GPU kernel keeps the server's assigned devices.
    """
    env = os.environ if environ is None else environ
    if device not in ("cpu", "gpu"):
        raise SystemExit(f"desilab kernel: device must be 'cpu' or 'gpu', not {device!r}")
    limit = env.get("DESILAB_CPU_LIMIT") or str(len(os.sched_getaffinity(0)))
    for name in THREAD_VARIABLES:
        env[name] = limit
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = env.get("DESILAB_GPUS", "")
    env["DESILAB_KERNEL_DEVICE"] = device


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m desilab.kernels.launch {cpu|gpu} -f CONNECTION_FILE")
    apply_profile(argv[0])
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance(argv=argv[1:])


if __name__ == "__main__":
    main()
