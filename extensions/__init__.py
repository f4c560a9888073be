"""desilab.extensions: notebook widgets and the jupyter-server extension."""

from __future__ import annotations

import os
from pathlib import Path

from .dask_config import dask_cluster, dask_settings
from .ray_backends import InProcessRayBackend, LocalRayBackend, RayBackend
from .ray_cluster import (
    ClusterInfo,
    ClusterRequest,
    ClusterStatus,
    ProfileLimitError,
    ProfileLimits,
    RayLaunchError,
)
from .ray_controller import RayClusterController, list_ray_clusters, stop_ray_cluster
from .ray_widget import RayClusterWidget
from .templates import copy_template, list_templates, publish_templates

#: Widgets that import bokeh, astropy and ipywidgets (seconds): loaded on first use,
#: so the jupyter-server extension (this package) does not slow every server start.
_LAZY = {
    "CatalogQuery": ".catalog_widget",
    "CatalogQueryModel": ".catalog_query",
    "QueryHistory": ".catalog_query",
    "SpectrumExplorer": ".spectrum_widget",
    "SpectrumExplorerModel": ".spectra",
    "Spectrum": ".spectra",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CONFIG_DIR = Path(__file__).parent / "jupyter-config"


def server_env(inherited: str | None = None) -> dict[str, str]:
    """JUPYTER_CONFIG_PATH that enables the desilab server extension and kernels."""
    inherited = os.environ.get("JUPYTER_CONFIG_PATH", "") if inherited is None else inherited
    return {"JUPYTER_CONFIG_PATH": os.pathsep.join(p for p in (str(CONFIG_DIR), inherited) if p)}


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "desilab.extensions"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .server import load_jupyter_server_extension

    load_jupyter_server_extension(serverapp)


__all__ = [
    "CatalogQuery",
    "CatalogQueryModel",
    "ClusterInfo",
    "ClusterRequest",
    "ClusterStatus",
    "InProcessRayBackend",
    "LocalRayBackend",
    "ProfileLimitError",
    "ProfileLimits",
    "QueryHistory",
    "RayBackend",
    "RayClusterController",
    "RayClusterWidget",
    "RayLaunchError",
    "Spectrum",
    "SpectrumExplorer",
    "SpectrumExplorerModel",
    "copy_template",
    "dask_cluster",
    "dask_settings",
    "list_ray_clusters",
    "list_templates",
    "publish_templates",
    "server_env",
    "stop_ray_cluster",
]
