"""jupyter-server extension: one-click login to a Ray dashboard behind the hub.

desilab's Ray clusters use Ray's token authentication (Ray's ports listen on every
interface, and other accounts share the machine), so the dashboard asks the
browser for the token. ``GET {base_url}desilab/ray/dashboard/{port}`` — only the
server's owner gets here, through the hub — checks that ``port`` is the
dashboard of one of the user's running clusters, sets Ray's token cookie for
``{base_url}proxy/{port}/`` only (HttpOnly, SameSite=Strict) and redirects there,
where jupyter-server-proxy forwards the cookie to the dashboard.
"""

from __future__ import annotations

import html
from typing import Any

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .ray_backends import LocalRayBackend
from .ray_cluster import read_token
from .ray_registry import read_json

COOKIE = "ray-authentication-token"


class DashboardNotFound(Exception):
    """The port is not the dashboard of one of the user's running clusters."""


def dashboard_login(port: int, backend: LocalRayBackend | None = None) -> str:
    """The token for the dashboard on ``port``, if it is one of the user's clusters."""
    backend = backend or LocalRayBackend()
    for info in backend.list():
        if info.dashboard_port == port:
            spec = read_json(backend.registry / info.id / "spec.json")
            token = read_token(spec.get("token_path"))
            if token:
                return token
    raise DashboardNotFound(f"no running Ray cluster of yours has its dashboard on port {port}")


class RayDashboardLoginHandler(JupyterHandler):
    @web.authenticated
    def get(self, port: str) -> None:
        try:
            token = dashboard_login(int(port))
        except DashboardNotFound as e:
            self.set_status(404)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(
                f"<!doctype html><title>No such Ray dashboard</title><p>{html.escape(str(e))}"
                "; start one from the Ray cluster widget.</p>"
            )
            return
        target = url_path_join(self.base_url, "proxy", port) + "/"
        self.set_cookie(
            COOKIE,
            token,
            path=target,
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
        )
        self.redirect(target)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "desilab.extensions.ray_server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$",
        [(url_path_join(base, r"desilab/ray/dashboard/(\d+)/?"), RayDashboardLoginHandler)],
    )
