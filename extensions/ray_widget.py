"""The Ray cluster widget: a thin ipywidgets view over :class:`RayClusterController`.

In a notebook::

    from desilab.extensions import RayClusterWidget
    RayClusterWidget()

Start / Scale / Stop buttons, a progress bar and message, errors in red, a
status table (nodes, CPUs, GPUs, memory, tasks), the dashboard link through
jupyter-server-proxy, the connect snippet, and the list of the user's clusters
(from any notebook) with a Stop button each. All work happens in the
controller's threads; this class only renders its state and forwards clicks.
"""

from __future__ import annotations

import html
from typing import Any

from .ray_backends import RayBackend
from .ray_cluster import ClusterInfo, ClusterRequest, gib
from .ray_controller import ControllerState, RayClusterController

GiB = 1024**3


class RayClusterWidget:
    """Display with ``display(w)`` or as the last expression of a cell."""

    def __init__(
        self,
        controller: RayClusterController | None = None,
        *,
        backend: RayBackend | None = None,
        status_interval: float = 2.0,
    ):
        import ipywidgets as w

        self.controller = controller or RayClusterController(
            backend, status_interval=status_interval
        )
        limits = self.controller.backend.limits
        try:
            default = self.controller.default_request()
            cpus, memory = default.cpus or 1, (default.memory or GiB) / GiB
        except ValueError:
            cpus, memory = 1, 1.0
        style = {"description_width": "initial"}
        layout = w.Layout(width="150px")
        self.workers = w.BoundedIntText(
            1, min=1, max=max(1, limits.cpus), description="Workers", style=style, layout=layout
        )
        self.cpus = w.BoundedIntText(
            cpus,
            min=1,
            max=max(1, limits.cpus),
            description="CPUs each",
            style=style,
            layout=layout,
        )
        self.gpus = w.BoundedIntText(
            0, min=0, max=len(limits.gpus), description="GPUs each", style=style, layout=layout
        )
        self.memory = w.BoundedFloatText(
            round(memory, 2),
            min=0.25,
            max=4096,
            step=0.25,
            description="GiB each",
            style=style,
            layout=layout,
        )
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.scale_button = w.Button(description="Scale", icon="arrows-v")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.progress = w.FloatProgress(0.0, min=0.0, max=1.0, layout=w.Layout(width="220px"))
        self.message = w.HTML()
        self.error = w.HTML()
        self.table = w.HTML()
        self.link = w.HTML()
        self.snippet = w.Textarea(
            disabled=True,
            layout=w.Layout(width="100%", height="5.5em"),
            placeholder="the connect snippet appears here once the cluster is ready",
        )
        self.clusters_box = w.VBox()
        self.cpus.observe(self._cpus_changed, names="value")
        self.start_button.on_click(lambda _: self.click_start())
        self.scale_button.on_click(lambda _: self.click_scale())
        self.stop_button.on_click(lambda _: self.controller.stop())
        self.refresh_button.on_click(lambda _: self.controller.refresh())
        header = w.HTML(
            f"<b>Ray cluster</b> &middot; profile <code>{html.escape(limits.profile)}</code>: "
            f"{limits.cpus} CPUs, {gib(limits.memory)}, {len(limits.gpus)} GPUs"
        )
        self.view = w.VBox(
            [
                header,
                w.HBox([self.workers, self.cpus, self.gpus, self.memory]),
                w.HBox([self.start_button, self.scale_button, self.stop_button]),
                w.HBox([self.progress, self.message]),
                self.error,
                self.table,
                self.link,
                self.snippet,
                w.HBox([w.HTML("<b>My Ray clusters</b>"), self.refresh_button]),
                self.clusters_box,
            ]
        )
        self._rows: dict[str, Any] = {}
        self.controller.subscribe(self.render)
        self.render(self.controller.state)
        self.controller.refresh()

    # -- clicks ------------------------------------------------------------------
    def click_start(self) -> None:
        self.controller.start(
            workers=self.workers.value,
            cpus=self.cpus.value,
            gpus=self.gpus.value,
            memory=int(self.memory.value * GiB),
        )

    def click_scale(self) -> None:
        self.controller.scale(self.workers.value)

    def _cpus_changed(self, change: dict) -> None:
        """Keep the memory field at the CPU share of the profile (room to scale up)."""
        try:
            plan = self.controller.backend.plan(ClusterRequest(cpus=change["new"]))
        except ValueError:
            return
        self.memory.value = round((plan.request.memory or GiB) / GiB, 2)

    # -- rendering -------------------------------------------------------------------
    def render(self, state: ControllerState) -> None:
        live = state.cluster is not None and state.cluster.live
        self.start_button.disabled = state.busy or live
        self.scale_button.disabled = state.busy or not live
        self.stop_button.disabled = not live or state.phase == "stopping"
        for field in (self.cpus, self.gpus, self.memory):
            field.disabled = state.busy or live
        self.progress.value = state.progress or 0.0
        self.progress.bar_style = (
            "danger" if state.error else ("success" if state.phase == "ready" else "info")
        )
        self.message.value = html.escape(state.message)
        self.error.value = (
            f'<div style="color:#b00020;white-space:pre-wrap">{html.escape(state.error)}</div>'
            if state.error
            else ""
        )
        self.table.value = self._table(state)
        info = state.cluster
        if live and info is not None and info.dashboard_url:
            url = html.escape(info.dashboard_url)
            href = html.escape(info.dashboard_login_url or info.dashboard_url)
            self.link.value = f'Dashboard: <a href="{href}" target="_blank">{url}</a>'
        else:
            self.link.value = ""
        self.snippet.value = info.connect_snippet() if live and info else ""
        self._render_clusters(state.clusters, state.cluster)

    def _table(self, state: ControllerState) -> str:
        if state.status is None:
            return ""
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in state.status.rows()
        )
        return f"<table>{rows}</table>"

    def _render_clusters(self, clusters: tuple[ClusterInfo, ...], own: ClusterInfo | None):
        import ipywidgets as w

        rows = []
        for info in clusters:
            mine = " (this notebook)" if own is not None and own.id == info.id else ""
            text = (
                f"<code>{html.escape(info.name)}</code>{mine}: {html.escape(info.status)}, "
                f"{info.workers} workers, {html.escape(info.owner)}"
            )
            row = self._rows.get(info.id)
            if row is None:
                label = w.HTML()
                button = w.Button(
                    description="Stop", button_style="warning", layout=w.Layout(width="80px")
                )
                button.on_click(lambda _, cid=info.id: self.controller.stop(cid))
                row = self._rows[info.id] = w.HBox([label, button])
            row.children[0].value = text
            row.children[1].disabled = not info.live
            rows.append(row)
        for cid in set(self._rows) - {info.id for info in clusters}:
            self._rows.pop(cid).close()
        if not rows:
            rows = [w.HTML("<i>none running</i>")]
        self.clusters_box.children = rows

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.view)

    def close(self) -> None:
        self.controller.close()
        self.view.close()
