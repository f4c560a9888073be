"""Where the desilab kernelspecs live, and how a server finds them.

The specs ship inside the package and reach a server through JUPYTER_PATH,
so nothing is written to system-wide Jupyter folders. ``python`` in a spec's
argv is replaced by jupyter_client with the server's own interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path

SPECS = Path(__file__).parent / "specs"

#: thread-pool variables set to the profile's CPU limit
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TORCH_NUM_THREADS",
    "RAYON_NUM_THREADS",
)

KERNEL_NAMES = {"cpu": "desilab-cpu", "gpu": "desilab-gpu"}


def kernel_env(gpu: bool, inherited: str | None = None) -> dict[str, str]:
    """JUPYTER_PATH for a server: the CPU kernel always, the GPU kernel on GPU profiles."""
    paths = [str(SPECS / "cpu")]
    if gpu:
        paths.insert(0, str(SPECS / "gpu"))
    inherited = os.environ.get("JUPYTER_PATH", "") if inherited is None else inherited
    if inherited:
        paths.append(inherited)
    return {"JUPYTER_PATH": os.pathsep.join(paths)}
