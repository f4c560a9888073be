"""desilab.extensions: notebook widgets and the jupyter-server extension."""

from __future__ import annotations

import os
from pathlib import Path

from .templates import copy_template, list_templates, publish_templates

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


__all__ = ["copy_template", "list_templates", "publish_templates", "server_env"]
