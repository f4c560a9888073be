"""The jupyter-server extension: REST endpoints under ``/desilab/api``."""

from __future__ import annotations

import json
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .templates import copy_template, list_templates


class TemplatesHandler(APIHandler):
    """GET: the shared templates; POST {"name": ...}: copy one into the workspace."""

    @property
    def root(self) -> Path:
        return Path(self.settings["server_root_dir"]).expanduser()

    @web.authenticated
    def get(self) -> None:
        self.finish(json.dumps({"templates": list_templates(self.root)}))

    @web.authenticated
    def post(self) -> None:
        body = self.get_json_body() or {}
        name = body.get("name")
        if not isinstance(name, str):
            raise web.HTTPError(400, 'body must be {"name": "<template>.ipynb"}')
        try:
            path = copy_template(name, self.root)
        except FileNotFoundError as e:
            raise web.HTTPError(404, str(e)) from e
        self.set_status(201)
        self.finish(json.dumps({"path": path.relative_to(self.root).as_posix()}))


def load_jupyter_server_extension(serverapp) -> None:
    """Register the handlers (called by jupyter-server)."""
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$", [(url_path_join(base, "desilab/api/templates"), TemplatesHandler)]
    )
