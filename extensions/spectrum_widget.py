"""SpectrumExplorer: the bokeh + ipywidgets view of :class:`SpectrumExplorerModel`."""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ipywidgets as w
import numpy as np
from bokeh.models import ColumnDataSource, LabelSet, Range1d
from bokeh.plotting import figure

from .spectra import SpectrumExplorerModel

ARM_COLOURS = {"B": "#1f77b4", "R": "#d62728", "Z": "#7f3c8d", "spectrum": "#1f77b4"}
VI_FLAGS = ("good", "bad", "interesting", "artifact", "wrong-z", "unsure")


_BOKEHJS_LOADED = False


def ensure_bokehjs() -> None:
    """Load BokehJS into the notebook page once per kernel (jupyter_bokeh needs it).

    Inline, not from a CDN: servers behind the hub may have no internet access.
    Outside a notebook kernel this does nothing.
    """
    global _BOKEHJS_LOADED
    if _BOKEHJS_LOADED:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)
    _BOKEHJS_LOADED = True


def _nan_to_none(a: np.ndarray) -> list:
    """Bokeh draws gaps at NaN; JSON needs them as null."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float)]


class SpectrumExplorer(w.VBox):
    """Browse spectra: arms with noise bands, masked pixels, smoothing, lines, VI.

    Build it from a model, or with :meth:`from_arrays`, :meth:`from_coadd`,
    :meth:`from_catalog` (TARGETIDs or a query result).
    """

    def __init__(self, model: SpectrumExplorerModel, height: int = 380):
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.fig = figure(
            height=height,
            sizing_mode="stretch_width",
            x_axis_label="observed wavelength [Å]",
            y_axis_label="flux [1e-17 erg/(s cm² Å)]",
            tools="xpan,xwheel_zoom,box_zoom,reset,save",
        )
        self.sources: dict[str, ColumnDataSource] = {}
        self.masked = ColumnDataSource({"x": [], "y": []})
        self.fig.scatter(
            "x", "y", source=self.masked, marker="x", color="orange", size=5, legend_label="masked"
        )
        self.line_source = ColumnDataSource({"x": [], "y0": [], "y1": [], "name": [], "color": []})
        self.fig.segment(
            "x", "y0", "x", "y1", source=self.line_source, color="color", line_dash="dashed"
        )
        self.fig.add_layout(
            LabelSet(
                x="x", y="y1", text="name", source=self.line_source, text_font_size="9pt", angle=1.2
            )
        )
        self.fig.legend.click_policy = "hide"
        self.fig.legend.location = "top_right"
        self._build_controls()
        # draw first: glyphs added after the BokehModel is made never reach the browser
        self.refresh()
        from jupyter_bokeh import BokehModel

        ensure_bokehjs()
        self.plot = BokehModel(self.fig)
        super().__init__([self.toolbar, self.plot, w.HBox([self.info, self.vi_box]), self.status])

    # -- constructors ---------------------------------------------------------
    @classmethod
    def from_arrays(cls, *args: Any, **kwargs: Any) -> SpectrumExplorer:
        return cls(SpectrumExplorerModel.from_arrays(*args, **kwargs))

    @classmethod
    def from_coadd(cls, coadd: Any, redshifts: Any = None, **kwargs: Any) -> SpectrumExplorer:
        return cls(SpectrumExplorerModel.from_coadd(coadd, redshifts, **kwargs))

    @classmethod
    def from_catalog(
        cls, catalog: Any, targets: Sequence[int] | Any, dsn: str | None = None
    ) -> SpectrumExplorer:
        """Targets as TARGETIDs or a table with a TARGETID column (a query result)."""
        from .catalog_spectra import catalog_loader

        if hasattr(targets, "colnames"):
            column = next(c for c in targets.colnames if c.lower() == "targetid")
            targets = list(targets[column])
        dsn = dsn or os.environ.get("DESILAB_DATABASE_URL")
        save = None
        if dsn:
            from ..desi.vi import save_inspection

            def save(targetid, flag, comment, z):
                return save_inspection(dsn, targetid, flag, comment, z, source="spectrum-explorer")

        return cls(SpectrumExplorerModel(targets, catalog_loader(catalog), save_vi=save))

    # -- controls ---------------------------------------------------------------
    def _build_controls(self) -> None:
        self.prev_button = w.Button(description="◀ Previous", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="Next ▶", layout=w.Layout(width="110px"))
        self.position = w.BoundedIntText(
            value=1,
            min=1,
            max=len(self.model),
            description="target",
            layout=w.Layout(width="170px"),
        )
        self.z_box = w.BoundedFloatText(value=0.0, min=-0.01, max=7.0, step=0.001, description="z")
        self.z_slider = w.FloatSlider(value=0.0, min=-0.01, max=7.0, step=0.0005, readout=False)
        self.z_reset = w.Button(description="catalog z", layout=w.Layout(width="100px"))
        self.smoothing = w.IntSlider(value=1, min=1, max=51, step=2, description="smooth [px]")
        self.frame = w.ToggleButtons(options=["observed", "rest"], value="observed")
        self.toolbar = w.VBox(
            [
                w.HBox([self.prev_button, self.next_button, self.position, self.frame]),
                w.HBox([self.z_box, self.z_slider, self.z_reset, self.smoothing]),
            ]
        )
        self.info = w.HTML(layout=w.Layout(width="45%"))
        self.vi_flag = w.ToggleButtons(options=VI_FLAGS, value=None, description="VI")
        self.vi_comment = w.Textarea(placeholder="comment (optional)", layout=w.Layout(width="95%"))
        self.vi_save = w.Button(description="Save inspection", button_style="primary")
        self.vi_box = w.VBox(
            [self.vi_flag, self.vi_comment, self.vi_save], layout=w.Layout(width="55%")
        )
        self.status = w.HTML()
        self.prev_button.on_click(lambda _: self._navigate(self.model.previous))
        self.next_button.on_click(lambda _: self._navigate(self.model.next))
        self.position.observe(lambda ch: self._navigate(self.model.go, ch["new"] - 1), "value")
        self.z_box.observe(lambda ch: self._set_z(ch["new"], 5e-6), "value")
        self.z_slider.observe(
            lambda ch: self._set_z(ch["new"], self.z_slider.step / 2 + 1e-9), "value"
        )
        self.z_reset.on_click(lambda _: self._reset_z())
        self.smoothing.observe(lambda ch: self._guard(self.model.set_smoothing, ch["new"]), "value")
        self.frame.observe(lambda ch: self._guard(self.model.set_frame, ch["new"]), "value")
        self.vi_save.on_click(lambda _: self._save_vi())

    # -- actions ----------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        colour = "#a94442" if error else "#3c763d"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def _guard(self, action, *args) -> None:
        try:
            action(*args)
        except Exception as e:  # shown inline, in plain words
            self._say(str(e), error=True)
            return
        self.refresh()

    def _navigate(self, action, *args) -> None:
        """Load off the kernel's main thread: reading a coadd can take a moment."""
        self._say("loading…")

        def done(future):
            try:
                future.result()
            except Exception as e:
                self._say(f"could not load target: {e}", error=True)
                return
            self.refresh()
            self._say("")

        self._pool.submit(functools.partial(action, *args)).add_done_callback(done)

    def _set_z(self, z: float, tolerance: float = 1e-9) -> None:
        # the box shows z to 5 decimals and the slider snaps it to its step: neither
        # echo of what refresh() wrote is the user choosing a redshift
        if abs(z - self.model.z) <= tolerance:
            return
        self._guard(self.model.set_redshift, z)

    def _reset_z(self) -> None:
        self.model.reset_redshift()
        self.refresh()

    def _save_vi(self) -> None:
        if self.vi_flag.value is None:
            self._say("choose a flag before saving", error=True)
            return
        try:
            ident = self.model.save_vi(self.vi_flag.value, self.vi_comment.value)
        except Exception as e:
            self._say(f"inspection not saved: {e}", error=True)
            return
        self._say(
            f"saved inspection #{ident}: {self.vi_flag.value} for TARGETID {self.model.targetid}"
        )
        self.vi_comment.value = ""

    # -- drawing ------------------------------------------------------------------
    def refresh(self) -> None:
        m = self.model
        data = m.arm_data()
        for name, arm in data.items():
            cols = {k: _nan_to_none(v) for k, v in arm.items()}
            if name not in self.sources:
                src = self.sources[name] = ColumnDataSource(cols)
                colour = ARM_COLOURS.get(name, "#444444")
                self.fig.varea("x", "lo", "hi", source=src, color=colour, alpha=0.2)
                self.fig.line("x", "flux", source=src, color=colour, legend_label=name)
                self.fig.line(
                    "x", "model", source=src, color="black", line_width=1.5, legend_label="model"
                )
            else:
                self.sources[name].data = cols
        has_model = any(np.isfinite(arm["model"]).any() for arm in data.values())
        for item in self.fig.legend[0].items if self.fig.legend else ():
            if getattr(item.label, "value", None) == "model":
                item.visible = has_model  # no "model" entry for spectra without one
        masked = m.masked_points()
        self.masked.data = {"x": _nan_to_none(masked["x"]), "y": _nan_to_none(masked["y"])}
        finite = np.concatenate(
            [a["flux"][np.isfinite(a["flux"])] for a in data.values()] or [[0.0]]
        )
        top = float(np.percentile(finite, 99.5)) * 1.15 if finite.size else 1.0
        bottom = min(0.0, float(np.percentile(finite, 0.5))) if finite.size else 0.0
        markers = m.line_markers()
        self.line_source.data = {
            "x": [x for x, _, _ in markers],
            "y0": [bottom] * len(markers),
            "y1": [top * 0.92] * len(markers),
            "name": [n for _, n, _ in markers],
            "color": ["#2ca02c" if e else "#8c564b" for _, _, e in markers],
        }
        lo, hi = m.x_range()
        self.fig.x_range = (
            Range1d(lo, hi) if not isinstance(self.fig.x_range, Range1d) else self.fig.x_range
        )
        self.fig.x_range.start, self.fig.x_range.end = lo, hi
        self.fig.y_range = (
            Range1d(bottom, top) if not isinstance(self.fig.y_range, Range1d) else self.fig.y_range
        )
        self.fig.y_range.start, self.fig.y_range.end = bottom, top
        self.fig.xaxis.axis_label = f"{m.frame} wavelength [Å]"
        self.position.value = m.index + 1
        self.z_box.value = round(m.z, 5)
        self.z_slider.value = m.z
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in m.info_rows()
        )
        self.info.value = f"<table class='desilab-target-info'>{rows}</table>"
