"""VoidExplorer: the ipywidgets + bokeh view of a :class:`~.explore.VoidStudy`.

Sky view (RA, Dec) and slice view (a slab through the observer) of the galaxies,
coloured by environment, with the voids drawn as their maximal spheres on the sky
and as the cross-sections of their holes in the slice. Tapping a void (or picking it
from the list) shows its members and their properties; the comparison tab overlays
void and matched wall distributions with the test results; the summary tab has the
void size function and the filling fractions. Loading, void finding and the
comparisons run off the kernel's main thread with a progress bar; errors are shown
inline in plain words.
"""

from __future__ import annotations

import html
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ipywidgets as w
import numpy as np
from astropy.table import Table
from bokeh.models import ColumnDataSource

from .classify import VFLAG_NAMES, VFLAG_WALL
from .explore import SlicePlane, VoidStudy
from .stats import DEFAULT_PROPERTIES, Comparison
from .widget_views import (
    ENV_COLOURS,
    MEMBER_COLUMNS,
    SELECTED,
    VoidFigures,
    comparison_rows,
    plain,
    set_range,
    subsample,
    table_html,
    unwrap_ra,
)

__all__ = ["VoidExplorer"]


class VoidExplorer(w.VBox):
    """Explore voids and their galaxies: sky and slice views, members, comparisons.

    Parameters
    ----------
    study : VoidStudy, optional
        What to show; load one later with :meth:`from_database`, :meth:`find` or
        :meth:`set_study`.
    max_points : int
        Most galaxies drawn per view (a fixed random subset beyond that).
    n_boot : int
        Bootstrap resamples of the comparisons.
    compare_on_load : bool
        Run the void/wall comparisons as soon as a study is shown.
    """

    def __init__(
        self,
        study: VoidStudy | None = None,
        *,
        max_points: int = 20_000,
        n_boot: int = 500,
        compare_on_load: bool = True,
        height: int = 420,
    ):
        self.study: VoidStudy | None = None
        self.max_points, self.n_boot, self.compare_on_load = max_points, n_boot, compare_on_load
        self.selected_void: int | None = None
        self.members: Table | None = None
        self.comparisons: dict[str, Comparison | str] = {}
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._jobs = 0
        self.last_job: Future | None = None
        self._ra0 = 0.0
        self.figures = VoidFigures(height, self._tapped)
        self._build_controls()
        from jupyter_bokeh import BokehModel

        views = w.HBox([BokehModel(self.figures.sky_fig), BokehModel(self.figures.slice_fig)])
        tabs = w.Tab(
            [
                w.VBox([self.void_info, self.member_table]),
                w.VBox([self.property, BokehModel(self.figures.hist_fig), self.test_table]),
                w.VBox([self.summary_html, BokehModel(self.figures.size_fig)]),
            ]
        )
        for i, title in enumerate(("Void members", "Void vs wall", "Summary")):
            tabs.set_title(i, title)
        self.tabs = tabs
        super().__init__(
            [
                w.HBox([self.title, self.progress, self.status]),
                w.HBox([self.void_picker, self.slice_button, self.compare_button]),
                w.HBox([self.ra, self.dec, self.offset, self.thickness]),
                views,
                tabs,
            ]
        )
        if study is not None:
            self.set_study(study)

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_database(
        cls, dsn: str | None = None, model_version: str | None = None, cap: str = "NGC", **kw: Any
    ) -> VoidExplorer:
        """A stored run (``desilab voids find|classify``) from the catalog, loaded off-thread.

        ``dsn`` defaults to DESILAB_DATABASE_URL, ``model_version`` to the newest run.
        """
        explorer = cls(**kw)
        explorer.load_database(dsn, model_version, cap)
        return explorer

    @classmethod
    def find(cls, source: Any = None, cap: str = "NGC", **kw: Any) -> VoidExplorer:
        """Find voids now (:meth:`VoidStudy.run`) from ``source`` (default: the catalog)."""
        view = {
            k: kw.pop(k) for k in ("max_points", "n_boot", "compare_on_load", "height") if k in kw
        }
        explorer = cls(**view)
        explorer.run_study(source, cap=cap, **kw)
        return explorer

    # -- background work ---------------------------------------------------------------------
    def _submit(self, what: str, job, done=None) -> Future:
        """Run ``job(step)`` then ``done(result)`` off the main thread.

        Progress and errors go to the status line; the returned future resolves once
        the view shows the result. Jobs run one after another.
        """
        self._jobs += 1
        self._busy()

        def work():
            self._step(what, 0.0)
            try:
                result = job(self._step)
                if done is not None:
                    done(result)
                return result
            except Exception as exc:
                self._say(f"{what} failed: {plain(exc)}", error=True)
                raise
            finally:
                self._jobs -= 1
                self._busy()

        self.last_job = self._pool.submit(work)
        return self.last_job

    def run_study(self, source: Any = None, cap: str = "NGC", **kwargs: Any) -> Future:
        """Find voids in ``source`` (default DESILAB_DATABASE_URL) and show them."""
        source = source if source is not None else os.environ.get("DESILAB_DATABASE_URL")

        def job(step):
            if source is None and kwargs.get("galaxies") is None:
                raise RuntimeError(
                    "no galaxies: pass a DR1 tree or DSN (DESILAB_DATABASE_URL unset)"
                )
            return VoidStudy.run(source, cap=cap, progress=step, **kwargs)

        return self._submit("finding voids", job, self.set_study)

    def load_database(
        self, dsn: str | None = None, model_version: str | None = None, cap: str = "NGC"
    ) -> Future:
        """Load a stored run from the catalog and show it."""
        dsn = dsn or os.environ.get("DESILAB_DATABASE_URL")

        def job(step):
            from .results import list_runs

            if not dsn:
                raise RuntimeError("no database: DESILAB_DATABASE_URL is not set")
            version = model_version
            if version is None:
                runs = list_runs(dsn)
                if not runs:
                    raise LookupError(
                        "the catalog has no void runs yet: run `desilab voids find` and "
                        "`desilab voids classify`, or use VoidExplorer.find()"
                    )
                version = runs[0]["model_version"]
            return VoidStudy.from_database(dsn, version, cap, progress=step)

        return self._submit("loading voids", job, self.set_study)

    def compare(self, properties: dict[str, str] | None = None) -> Future:
        """Compare void and matched wall galaxies, one property at a time, off-thread."""
        if self.study is None:
            self._say("nothing to compare yet: load or find voids first", error=True)
            future: Future = Future()
            future.set_result({})
            return future
        study, props = self.study, properties or DEFAULT_PROPERTIES

        def job(step):
            out: dict[str, Comparison | str] = {}
            for i, (name, label) in enumerate(props.items()):
                step(f"comparing {name}", i / len(props))
                if name not in study.sample.table.colnames:
                    out[name] = f"not in the sample (no column {name})"
                    continue
                try:
                    (out[name],) = study.compare({name: label}, n_boot=self.n_boot, seed=0)
                except ValueError as exc:  # too few void galaxies with controls
                    out[name] = f"not compared: {exc}"
            step("done", 1.0)
            return out

        return self._submit("comparing void and wall galaxies", job, self._show_comparisons)

    # -- state changes -------------------------------------------------------------------------
    def set_study(self, study: VoidStudy) -> None:
        """Show ``study``: void list, views and summary (comparisons follow off-thread)."""
        self.study, self.selected_void, self.members, self.comparisons = study, None, None, {}
        t = study.sample.table
        ra, dec = np.asarray(t["RA"], float), np.asarray(t["DEC"], float)
        self._ra0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(ra)))))) % 360
        ra_u = unwrap_ra(ra, self._ra0)
        voids = study.void_table()
        order = np.argsort(-np.asarray(voids["RADIUS"]))
        self.void_picker.options = [("choose a void…", -1)] + [
            (
                f"void {int(voids['VOID'][i])}: R {voids['RADIUS'][i]:.1f} Mpc/h, "
                f"{int(voids['N_GAL'][i])} galaxies" + (" (edge)" if voids["EDGE"][i] else ""),
                int(voids["VOID"][i]),
            )
            for i in order
        ]
        self.void_picker.value = -1
        rmax = float(np.max(t["DIST"])) if len(t) else 100.0
        with self.hold_slice():
            set_range(self.ra, ra_u.min() - 1, ra_u.max() + 1, np.median(ra_u))
            set_range(self.dec, max(dec.min() - 1, -90), min(dec.max() + 1, 90), np.median(dec))
            set_range(self.offset, -rmax, rmax, 0.0)
        cap = study.sample.cap
        self.title.value = (
            f"<b>{html.escape(cap)}</b>: {len(t):,} galaxies, {len(study.catalog)} voids"
        )
        self._draw_sky(ra_u, dec)
        self.draw_slice()
        self._show_void()
        self._show_summary()
        self._say(f"showing {len(study.catalog)} voids")
        if self.compare_on_load:
            self.compare()

    def select_void(self, void_id: int | None) -> None:
        """Select a void (None or -1: none): highlight it and list its members."""
        if self.study is None:
            return
        void_id = None if void_id is None or void_id < 0 else int(void_id)
        if void_id is not None and void_id not in set(self.study.catalog.maximals["VOID"].tolist()):
            self._say(f"there is no void {void_id} in this catalog", error=True)
            return
        self.selected_void = void_id
        rows = np.flatnonzero(np.asarray(self.figures.sky_voids.data["void"]) == void_id)
        self.figures.sky_voids.selected.indices = rows[:1].tolist()
        if self.void_picker.value != (-1 if void_id is None else void_id):
            self.void_picker.value = -1 if void_id is None else void_id
        self._show_void()
        self.draw_slice()

    def slice_through(self, void_id: int | None = None) -> None:
        """Put the slice through the observer and the centre of a void (default: selected)."""
        void_id = self.selected_void if void_id is None else void_id
        if self.study is None or void_id is None:
            self._say("select a void first", error=True)
            return
        info = self.study.void_info(void_id)
        with self.hold_slice():
            self.ra.value = float(unwrap_ra(np.array([info["RA"]]), self._ra0)[0])
            self.dec.value = float(info["DEC"])
            self.offset.value = 0.0
        self.draw_slice()

    def plane(self) -> SlicePlane:
        """The slab the slice view shows."""
        return SlicePlane.through_observer(
            self.ra.value, self.dec.value, offset=self.offset.value, thickness=self.thickness.value
        )

    # -- drawing ---------------------------------------------------------------------------------
    def _draw_sky(self, ra_u: np.ndarray, dec: np.ndarray) -> None:
        s = self.study
        env = np.array([VFLAG_NAMES.get(int(f), "outside") for f in s.membership.vflag])
        idx = subsample(len(ra_u), self.max_points)
        self.figures.sky_galaxies.data = {
            "ra": ra_u[idx], "dec": dec[idx], "env": env[idx],
            "colour": [ENV_COLOURS[e] for e in env[idx]],
        }  # fmt: skip
        m = s.catalog.maximals
        radius_deg = np.degrees(np.arcsin(np.clip(m["RADIUS"] / np.maximum(m["R"], 1e-9), 0, 1)))
        cosdec = np.maximum(np.cos(np.radians(m["DEC"])), 0.05)
        self.figures.sky_voids.data = {
            "ra": unwrap_ra(m["RA"], self._ra0), "dec": np.asarray(m["DEC"], float),
            "width": 2 * radius_deg / cosdec, "height": 2 * radius_deg,
            "void": np.asarray(m["VOID"], int), "radius": np.asarray(m["RADIUS"], float),
        }  # fmt: skip
        self.figures.sky_voids.selected.indices = []

    def draw_slice(self) -> None:
        """Redraw the slice view (galaxies in the slab, hole cross-sections)."""
        if self.study is None:
            return
        view = self.study.slice(self.plane())
        g, c = view.galaxies, view.circles
        member = np.asarray(g["VOID"]) == (-2 if self.selected_void is None else self.selected_void)
        idx = subsample(len(g), self.max_points, keep=np.flatnonzero(member))
        env = [VFLAG_NAMES.get(int(f), "outside") for f in np.asarray(g["VFLAG"])[idx]]
        colour = [SELECTED if m else ENV_COLOURS[e] for m, e in zip(member[idx], env, strict=True)]
        self.figures.slice_galaxies.data = {
            "u": np.asarray(g["U"])[idx], "v": np.asarray(g["V"])[idx], "env": env,
            "index": np.asarray(g["INDEX"])[idx], "void": np.asarray(g["VOID"])[idx],
            "colour": colour,
        }  # fmt: skip
        chosen = np.asarray(c["VOID"]) == (-2 if self.selected_void is None else self.selected_void)
        self.figures.slice_holes.data = {
            "u": np.asarray(c["U"]), "v": np.asarray(c["V"]), "r": np.asarray(c["RADIUS"]),
            "void": np.asarray(c["VOID"]),
            "colour": np.where(chosen, SELECTED, ENV_COLOURS["void"]).tolist(),
        }  # fmt: skip
        self.figures.slice_holes.selected.indices = []
        self.figures.slice_fig.title.text = (
            f"RA {self.ra.value:.1f}°, Dec {self.dec.value:.1f}°, offset {self.offset.value:.0f} "
            f"Mpc/h: {len(g):,} galaxies, {len(c)} holes cut"
        )

    def _show_void(self) -> None:
        s, vid = self.study, self.selected_void
        if vid is None:
            self.members = None
            self.void_info.value = (
                "<i>Tap a void on the sky or in the slice, or pick one above.</i>"
            )
            self.member_table.value = ""
            self.figures.sky_members.data = {"ra": [], "dec": []}
            return
        info = s.void_info(vid)
        self.members = s.members(vid)
        cols = [c for c in MEMBER_COLUMNS if c in self.members.colnames]
        edge = {0: "interior", 1: "holes cross the survey edge", 2: "near the survey edge"}
        self.void_info.value = (
            f"<b>void {vid}</b>: maximal sphere R {info['RADIUS']:.2f} Mpc/h at RA "
            f"{info['RA']:.2f}°, Dec {info['DEC']:.2f}°, distance {info['R']:.1f} Mpc/h "
            f"(z ≈ {info['REDSHIFT']:.3f}); R_eff {info['R_EFF']:.2f} Mpc/h, "
            f"{info['N_HOLES']} holes, {edge.get(int(info['EDGE']), info['EDGE'])}; "
            f"<b>{len(self.members)} member galaxies</b>"
        )
        self.member_table.value = table_html(self.members[cols]) if len(self.members) else ""
        self.figures.sky_members.data = {
            "ra": unwrap_ra(self.members["RA"], self._ra0),
            "dec": np.asarray(self.members["DEC"], float),
        }

    def _show_summary(self) -> None:
        s = self.study.summary(n_points=50_000)
        vff, gvf, sf = s["volume_filling_fraction"], s["galaxy_void_fraction"], s["size_function"]
        counts = ", ".join(f"{k} {v:,}" for k, v in s["environments"].items())
        self.summary_html.value = (
            f"{s['n_voids']} voids ({s['n_edge_voids']} at the edge) in "
            f"{s['survey_volume_mpch3']:.3g} (Mpc/h)³.<br>Volume filling fraction "
            f"{vff.value:.3f} [{vff.low:.3f}, {vff.high:.3f}]; galaxies in voids "
            f"{gvf.value:.3f} [{gvf.low:.3f}, {gvf.high:.3f}] of void + wall "
            f"(95 % intervals).<br>Galaxies: {counts}."
        )
        edges = sf.edges.value
        mid = 0.5 * (edges[1:] + edges[:-1])
        dens, err = sf.density.value, sf.density_err.value
        self.figures.size_data.data = {"r": mid, "n": dens, "lo": dens - err, "hi": dens + err}

    def _show_comparisons(self, results: dict[str, Comparison | str]) -> None:
        self.comparisons = results
        self.test_table.value = comparison_rows(results)
        done = [k for k, v in results.items() if not isinstance(v, str)]
        self.property.options = [(DEFAULT_PROPERTIES.get(k, k), k) for k in done]
        if done:
            self.property.value = done[0]
            self.draw_histogram(done[0])
        self._say(f"compared {len(done)} of {len(results)} properties")

    def draw_histogram(self, name: str) -> None:
        """Void, matched-control and all-wall distributions of one compared property."""
        c = self.comparisons.get(name)
        if not isinstance(c, Comparison):
            return
        edges, hv, hc = c.histogram(30)
        x = np.asarray(self.study.sample.table[name], float)
        wall = x[(self.study.membership.vflag == VFLAG_WALL) & np.isfinite(x)]
        hw, _ = np.histogram(wall, edges, density=True) if len(wall) else (np.zeros_like(hv), 0)
        self.figures.hist_data.data = {
            "left": edges[:-1],
            "right": edges[1:],
            "void": hv,
            "control": hc,
        }
        mid = 0.5 * (edges[1:] + edges[:-1])
        self.figures.wall_line.data = {"x": mid, "wall": hw}
        self.figures.hist_fig.xaxis.axis_label = c.label
        self.figures.hist_fig.title.text = (
            f"{c.label}: Δ {c.delta:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}], "
            f"KS p {c.ks[1]:.2g}, MW p {c.mann_whitney[1]:.2g}"
        )

    # -- widgets ----------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        self.title = w.HTML("<i>no voids loaded</i>")
        self.progress = w.FloatProgress(min=0, max=1, layout=w.Layout(visibility="hidden"))
        self.status = w.HTML()
        self.void_picker = w.Dropdown(
            options=[("choose a void…", -1)], value=-1, description="void"
        )
        self.slice_button = w.Button(description="slice through it", icon="crosshairs")
        self.compare_button = w.Button(description="compare again", icon="refresh")
        slider = {"continuous_update": False, "layout": w.Layout(width="240px")}
        self.ra = w.FloatSlider(value=0.0, min=0, max=360, step=0.5, description="RA", **slider)
        self.dec = w.FloatSlider(value=0.0, min=-90, max=90, step=0.5, description="Dec", **slider)
        self.offset = w.FloatSlider(
            value=0.0, min=-500, max=500, step=1, description="offset", **slider
        )
        self.thickness = w.FloatSlider(
            value=10.0, min=2, max=60, step=1, description="thick", **slider
        )
        self.void_info = w.HTML()
        self.member_table = w.HTML()
        self.property = w.Dropdown(description="property")
        self.test_table = w.HTML()
        self.summary_html = w.HTML()
        self._holding = False
        self.void_picker.observe(lambda ch: self._guard(self.select_void, ch["new"]), "value")
        self.slice_button.on_click(lambda _: self._guard(self.slice_through))
        self.compare_button.on_click(lambda _: self.compare())
        for s in (self.ra, self.dec, self.offset, self.thickness):
            s.observe(lambda _: self._holding or self._guard(self.draw_slice), "value")
        self.property.observe(lambda ch: ch["new"] and self.draw_histogram(ch["new"]), "value")

    def hold_slice(self):
        """Context manager: change several slice sliders with one redraw (by the caller)."""
        explorer = self

        class _Hold:
            def __enter__(self):
                explorer._holding = True

            def __exit__(self, *exc):
                explorer._holding = False

        return _Hold()

    def _tapped(self, source: ColumnDataSource):
        def callback(attr, old, new):
            if new:  # a tap on a void (the frontend may send it twice: selecting is idempotent)
                self._guard(self.select_void, int(source.data["void"][new[0]]))

        return callback

    def _guard(self, action, *args) -> None:
        try:
            action(*args)
        except Exception as exc:  # shown inline, in plain words
            self._say(plain(exc), error=True)

    def _busy(self) -> None:
        busy = self._jobs > 0
        self.compare_button.disabled = busy
        self.progress.layout.visibility = "visible" if busy else "hidden"

    def _step(self, stage: str, done: float) -> None:
        self.progress.value = float(done)
        self._say(f"{stage}…" if done < 1 else "")

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#a94442" if error else "#31708f"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def close(self) -> None:
        """Close the widget and its worker thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()
