"""AnomalyExplorer: the bokeh + ipywidgets view of :class:`~.explorer.AnomalyExplorerModel`.

Latent map coloured by score and score histogram (bokeh, through jupyter_bokeh),
a top-N list, and below them the SpectrumExplorer of the selected object with
its VAE reconstruction. Clicking a point or a row selects; loading a coadd runs
off the kernel's main thread; errors show inline.
"""

from __future__ import annotations

import html
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, TapTool
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from bokeh.transform import linear_cmap

from .explorer import EXPLORER_FLAGS, AnomalyExplorerModel

__all__ = ["AnomalyExplorer"]


class AnomalyExplorer(w.VBox):
    """Explore anomaly scores: latent map, histogram, top-N, spectrum + reconstruction, flags.

    Parameters
    ----------
    model : AnomalyExplorerModel
    height : int
        Height of the latent map and histogram, pixels.

    Examples
    --------
    >>> AnomalyExplorer.connect("anomalies/store", "anomalies/vae")  # doctest: +SKIP
    """

    def __init__(self, model: AnomalyExplorerModel, height: int = 320) -> None:
        from jupyter_bokeh import BokehModel

        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._spectrum_view: Any = None
        pts = model.points()
        # TARGETIDs exceed 2**53: the browser gets them as text, lookups use this array.
        self._targetids = pts.pop("targetid")
        self.source = ColumnDataSource(
            {**{k: v.tolist() for k, v in pts.items()}, "targetid": self._targetids.astype(str)}
        )
        lo, hi = np.nanpercentile(pts["score"], [1, 99.5])
        colour = linear_cmap("score", Viridis256, float(lo), float(hi))
        self.map = figure(
            height=height,
            width=460,
            title="latent space (first two principal axes), colour = score",
            tools="pan,wheel_zoom,box_zoom,reset,tap",
            x_axis_label="latent PC1",
            y_axis_label="latent PC2",
        )
        self.map.scatter("x", "y", source=self.source, size=5, color=colour, alpha=0.8)
        self.map.add_layout(ColorBar(color_mapper=colour["transform"], title="score"), "right")
        self.map.add_tools(
            HoverTool(tooltips=[("TARGETID", "@targetid"), ("z", "@z{0.000}"), ("score", "@score")])
        )
        self.map.select_one(TapTool).mode = "replace"
        self.source.selected.on_change("indices", self._on_tap)
        hist = model.histogram()
        self.hist_source = ColumnDataSource({k: v.tolist() for k, v in hist.items()})
        self.hist = figure(
            height=height, width=380, title="score histogram", tools="", x_axis_label="score"
        )
        self.hist.quad(top="counts", bottom=0, left="left", right="right", source=self.hist_source)
        self.marker = ColumnDataSource({"x": [], "y": []})
        self.hist.segment("x", 0, "x", "y", source=self.marker, color="red", line_width=2)
        self.top_list = w.Select(
            options=self._top_options(), rows=14, layout=w.Layout(width="420px")
        )
        self.top_list.value = None
        self.top_list.observe(
            lambda ch: ch["new"] is not None and self.open_target(ch["new"]), "value"
        )
        self.comment = w.Text(placeholder="comment (optional)", layout=w.Layout(width="300px"))
        self.flag_buttons = [w.Button(description=f, icon="flag") for f in EXPLORER_FLAGS]
        for button, flag in zip(self.flag_buttons, EXPLORER_FLAGS, strict=True):
            button.on_click(lambda _, f=flag: self.flag(f))
        self.selection = w.HTML("<i>click a point or a row to open its spectrum</i>")
        self.status = w.HTML()
        self.spectrum_box = w.VBox()
        top = w.VBox([w.HTML(f"<b>top {model.top_n} by score</b>"), self.top_list])
        super().__init__(
            [
                w.HBox([BokehModel(self.map), BokehModel(self.hist), top]),
                w.HBox([self.selection, *self.flag_buttons, self.comment]),
                self.status,
                self.spectrum_box,
            ]
        )

    @classmethod
    def connect(cls, store: str | Path, model: str | Path, **kwargs: Any) -> AnomalyExplorer:
        """Explorer over the catalog (see :meth:`AnomalyExplorerModel.connect`)."""
        return cls(AnomalyExplorerModel.connect(store, model, **kwargs))

    # -- actions ------------------------------------------------------------------------
    def _top_options(self) -> list[tuple[str, int]]:
        out = []
        for row in self.model.top():
            label = f"#{row['RANK']:<3} {row['TARGETID']}  score {row['SCORE']:.2f}"
            if "Z" in row.colnames:
                label += f"  z {row['Z']:.3f}"
            out.append((label, int(row["TARGETID"])))
        return out

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#a94442" if error else "#3c763d"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def _on_tap(self, _attr: str, _old: list, new: list) -> None:
        if new:
            self.open_target(int(self._targetids[new[0]]))

    def open_target(self, targetid: int) -> None:
        """Select an object and show its spectrum with the reconstruction (in a thread)."""
        self._say(f"loading TARGETID {targetid}…")
        self._pool.submit(self.model.select, targetid).add_done_callback(self._opened)

    def _opened(self, future) -> None:
        from desilab.extensions.spectrum_widget import SpectrumExplorer

        try:
            spectrum = future.result()
        except Exception as e:  # shown inline, in plain words
            self._say(f"could not open the spectrum: {e}", error=True)
            return
        m = self.model
        tid = m.selected
        score = float(m.scores["SCORE"][m.rank(tid) - 1])
        self.marker.data = {"x": [score], "y": [float(max(m.histogram()["counts"]))]}
        self.selection.value = (
            f"<b>TARGETID {tid}</b>: rank {m.rank(tid)} of {len(m)}, score {score:.2f}; "
            "black line = VAE reconstruction"
        )
        self._spectrum_view = SpectrumExplorer(spectrum)
        self.spectrum_box.children = [self._spectrum_view]
        self._say("")

    def flag(self, flag: str) -> None:
        """Flag the selected object; the result (or the reason it failed) shows inline."""
        try:
            ident = self.model.flag(flag, self.comment.value)
        except Exception as e:
            self._say(f"flag not saved: {e}", error=True)
            return
        self._say(f"saved inspection #{ident}: {flag} for TARGETID {self.model.selected}")
        self.comment.value = ""
