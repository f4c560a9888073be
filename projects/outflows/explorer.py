"""OutflowExplorer: the ipywidgets + bokeh view of a :class:`~.review.ReviewSession`.

The widget is thin: every decision goes through the session (which stores it in
``results.qso_outflows`` with who and when), and what it draws comes from the
pure functions :func:`bal_panel` and :func:`oiii_panel`. Loading a fit (which
re-reads the spectrum and redoes the fit) and refits run on a worker thread,
with a progress bar; failures appear under the buttons in plain words.
"""

from __future__ import annotations

import html
import os
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import ipywidgets as w
import numpy as np
from bokeh.layouts import row as bokeh_row
from bokeh.models import ColumnDataSource, Range1d
from bokeh.plotting import figure

from .batch import FitConfig, FitOutcome
from .flags import describe, explain
from .panels import _EMPTY_LINE, bal_panel, oiii_panel
from .review import ReviewItem, ReviewSession

__all__ = ["OutflowExplorer"]

#: Result columns shown in the information panel (name, label, error column).
SHOWN = (
    ("BI_CIV", "BI C IV [km/s]", "ERR_BI_CIV"),
    ("AI_CIV", "AI C IV [km/s]", "ERR_AI_CIV"),
    ("NCIV_2000", "C IV BI troughs", None),
    ("OIII_VMAX", "[O III] v_max [km/s]", "OIII_VMAX_ERR"),
    ("OIII_W80", "[O III] W80 [km/s]", "OIII_W80_ERR"),
    ("OIII_WING_FRAC", "wing flux fraction", "OIII_WING_FRAC_ERR"),
    ("LOG_L_OIII", "log L[O III] [erg/s]", "LOG_L_OIII_ERR"),
    ("LOG_EDOT", "log Ė_kin [erg/s]", None),
    ("LOG_COUPLING", "log Ė_kin / L_bol", None),
)


class OutflowExplorer(w.VBox):
    """Review outflow fits: data, continuum, components, troughs; accept, reject, refit.

    Parameters
    ----------
    session : ReviewSession
        The queue and the database connection decisions go to.
    height : int
        Height of the plots in pixels.

    Notes
    -----
    Use :meth:`from_catalog` in a notebook: it connects with DESILAB_DATABASE_URL and
    finds the DR1 tree through the catalog. :meth:`wait` blocks until the
    current background job (loading or refitting) has finished.
    """

    def __init__(self, session: ReviewSession, *, height: int = 330) -> None:
        self.session = session
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outflow-explorer")
        self._future: Future | None = None
        #: The fit on display (the current queue item, or the refit just made of it).
        self.shown: ReviewItem | None = None
        self._db_user = _database_user(session.dsn)
        self._build_plots(height)
        self._build_controls()
        from jupyter_bokeh import BokehModel

        self.plot = BokehModel(bokeh_row(self.bal_fig, self.oiii_fig, sizing_mode="stretch_width"))
        super().__init__(
            [
                self.header,
                self.nav,
                self.plot,
                w.HBox([self.info, self.actions]),
                w.HBox([self.progress, self.status]),
            ]
        )
        self._load()

    @classmethod
    def from_catalog(
        cls,
        dsn: str | None = None,
        data_root: str | None = None,
        *,
        mode: str = "flagged",
        reviewer: str | None = None,
        **kwargs,
    ) -> OutflowExplorer:
        """An explorer on a new :class:`ReviewSession`.

        Parameters
        ----------
        dsn : str, optional
            Default: DESILAB_DATABASE_URL.
        data_root : str, optional
            DR1 tree to re-read spectra from; default: where the catalog was ingested from.
        mode : {'flagged', 'random', 'all'}
        reviewer : str, optional
            Name stored with decisions; default: the hub user (JUPYTERHUB_USER), else
            the database role.
        **kwargs
            Passed to :class:`ReviewSession` (seed, limit, include_reviewed, ...).
        """
        from desilab.desi import DR1Layout

        from .sample import catalog_layout

        dsn = dsn or os.environ.get("DESILAB_DATABASE_URL")
        if not dsn:
            raise ValueError("no database: pass dsn= or set DESILAB_DATABASE_URL")
        layout = DR1Layout(data_root) if data_root else catalog_layout(dsn)
        reviewer = reviewer or os.environ.get("JUPYTERHUB_USER") or None
        return cls(ReviewSession(dsn, layout, reviewer=reviewer, mode=mode, **kwargs))

    # -- construction ------------------------------------------------------------------------

    def _build_plots(self, height: int) -> None:
        size = {
            "height": height,
            "sizing_mode": "stretch_width",
            "tools": "xpan,xwheel_zoom,box_zoom,reset,save",
        }
        self.bal_fig = figure(
            title="BAL",
            x_axis_label="rest wavelength [Å]",
            y_axis_label="flux [1e-17 erg/(s cm² Å)]",
            **size,
        )
        self.oiii_fig = figure(title="[O III]", x_axis_label="rest wavelength [Å]", **size)
        self.src = {
            "troughs": ColumnDataSource(
                {"left": [], "right": [], "kind": [], "ion": [], "color": []}
            ),
            "bal_data": ColumnDataSource(dict(_EMPTY_LINE)),
            "continuum": ColumnDataSource({"x": [], "y": [], "lo": [], "hi": []}),
        }
        self.bal_fig.y_range = Range1d(0.0, 1.0)
        self.bal_fig.quad(
            left="left",
            right="right",
            bottom=-1e6,
            top=1e6,
            color="color",
            alpha=0.25,
            source=self.src["troughs"],
            legend_label="troughs",
        )
        self.bal_fig.line(
            "x", "y", source=self.src["bal_data"], color="#555555", legend_label="data"
        )
        self.bal_fig.varea(
            "x", "lo", "hi", source=self.src["continuum"], color="#d62728", alpha=0.25
        )
        self.bal_fig.line(
            "x",
            "y",
            source=self.src["continuum"],
            color="#d62728",
            line_width=2,
            legend_label="continuum",
        )
        colours = {
            "data": "#555555",
            "total": "black",
            "continuum": "#8c564b",
            "hbeta": "#2ca02c",
            "core": "#1f77b4",
            "wing": "#d62728",
        }
        for name, colour in colours.items():
            self.src["oiii_" + name] = ColumnDataSource(dict(_EMPTY_LINE))
            dash = "solid" if name in ("data", "total") else "dashed"
            self.oiii_fig.line(
                "x",
                "y",
                source=self.src["oiii_" + name],
                color=colour,
                line_dash=dash,
                legend_label=name,
                line_width=1 if name == "data" else 2,
            )
        for fig in (self.bal_fig, self.oiii_fig):
            fig.legend.click_policy = "hide"
            fig.legend.location = "top_right"

    def _build_controls(self) -> None:
        self.header = w.HTML()
        self.prev_button = w.Button(description="◀ Previous", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="Next ▶", layout=w.Layout(width="110px"))
        self.position = w.BoundedIntText(
            value=1,
            min=1,
            max=max(len(self.session), 1),
            description="fit",
            layout=w.Layout(width="160px"),
        )
        self.nav = w.HBox([self.prev_button, self.next_button, self.position])
        self.info = w.HTML(layout=w.Layout(width="45%"))
        # Refit settings: the windows and components a reviewer may change.
        cell = w.Layout(width="190px")
        self.oiii_lo = w.FloatText(description="[O III] from", layout=cell)
        self.oiii_hi = w.FloatText(description="to", layout=cell)
        self.oiii_wing = w.Dropdown(options=["auto", "on", "off"], description="wing", layout=cell)
        self.bal_lo = w.FloatText(description="BAL from", layout=cell)
        self.bal_hi = w.FloatText(description="to", layout=cell)
        self.bal_smooth = w.FloatText(description="smooth km/s", layout=cell)
        self.comment = w.Textarea(
            placeholder="comment (stored with the decision)", layout=w.Layout(width="95%")
        )
        self.accept_button = w.Button(description="Accept", button_style="success")
        self.reject_button = w.Button(description="Reject", button_style="danger")
        self.refit_button = w.Button(
            description="Refit", button_style="warning", tooltip="fit again with the settings above"
        )
        self.actions = w.VBox(
            [
                w.HBox([self.oiii_lo, self.oiii_hi, self.oiii_wing]),
                w.HBox([self.bal_lo, self.bal_hi, self.bal_smooth]),
                self.comment,
                w.HBox([self.accept_button, self.reject_button, self.refit_button]),
            ],
            layout=w.Layout(width="55%"),
        )
        self.progress = w.IntProgress(
            value=0, min=0, max=3, layout=w.Layout(width="160px", visibility="hidden")
        )
        self.status = w.HTML()
        self.prev_button.on_click(lambda _: self._load(self.session.previous))
        self.next_button.on_click(lambda _: self._load(self.session.next))
        self.position.observe(self._on_position, "value")
        self.accept_button.on_click(lambda _: self._decide("accept"))
        self.reject_button.on_click(lambda _: self._decide("reject"))
        self.refit_button.on_click(lambda _: self._refit())

    # -- background work ---------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A load or refit is running."""
        return self._future is not None and not self._future.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running background job has finished (its errors are shown)."""
        if self._future is not None:
            self._future.exception(timeout)

    def _run(self, job, label: str) -> None:
        """Run ``job(step)`` on the worker thread; ``step(k, text)`` moves the progress bar."""
        if self.busy:
            self._say("still working on the previous request: wait for it to finish", True)
            return
        self._set_busy(True, label)

        def step(k: int, text: str) -> None:
            self.progress.value = k
            self._say(text)

        def work() -> None:
            try:
                job(step)
            except Exception as exc:  # shown inline, in plain words
                self._say(_plain(exc), error=True)
            finally:
                self._set_busy(False)

        self._future = self._pool.submit(work)

    def _set_busy(self, busy: bool, label: str = "") -> None:
        for b in (
            self.prev_button,
            self.next_button,
            self.accept_button,
            self.reject_button,
            self.refit_button,
        ):
            b.disabled = busy
        self.progress.layout.visibility = "visible" if busy else "hidden"
        self.progress.value = 0
        if busy:
            self.progress.description = label
            self._say(label + "…")

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#a94442" if error else "#3c763d"
        self.status.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    # -- actions -----------------------------------------------------------------------------

    def _on_position(self, change) -> None:
        if change["new"] - 1 != self.session.position and not self.busy:
            self._load(self.session.goto, change["new"] - 1)

    def _load(self, move=None, *args) -> None:
        """Move in the queue (optional) and show the fit there."""

        def job(step) -> None:
            if move is not None:
                move(*args)
            self._show(self.session.current(), step)

        self._run(job, "loading")

    def _show(self, item: ReviewItem | None, step, outcome: FitOutcome | None = None) -> None:
        self.shown = item
        if item is None:
            self._draw(None)
            self._say("the review queue is done" if len(self.session) else "nothing to review")
            return
        if outcome is None:
            step(1, f"re-reading and fitting TARGETID {item.targetid}")
            try:
                outcome = self.session.view(item)
            except Exception as exc:
                self._draw(None)
                raise RuntimeError(f"cannot show TARGETID {item.targetid}: {_plain(exc)}") from exc
        self._draw(outcome)
        # The flags of the fit as redone now (the spectrum may have changed since).
        flags = describe(int(outcome.row.get("FLAGS") or 0))
        self._say(f"TARGETID {item.targetid}: " + (", ".join(flags) or "no flags"))

    def _decide(self, what: str) -> None:
        note = self.comment.value.strip() or None
        item = self.session.current()
        if item is None:
            self._say("nothing to decide on: the review queue is done", error=True)
            return

        def job(step) -> None:
            step(1, f"storing {what}")
            record = getattr(self.session, what)(note)
            done = (
                f"{record['decision']} fit {item.id} (TARGETID {item.targetid}) "
                f"as {record['reviewer']} at {_when(record['decided_at'])}"
            )
            self.comment.value = ""
            try:
                self._show(self.session.current(), step)
            except Exception as exc:  # the decision is stored; only the next fit failed
                self._say(f"{done}; {_plain(exc)}", error=True)
                return
            self._say(done)

        self._run(job, what)

    def refit_changes(self) -> dict:
        """Settings in the refit controls that differ from the fit on display.

        Raises
        ------
        ValueError
            In plain words, when a window is empty or inverted.
        """
        if self.shown is None:
            raise ValueError("nothing to refit: the review queue is done")
        config = FitConfig.from_dict(self.shown.row["config"])
        wanted = {
            "oiii_window": (self.oiii_lo.value, self.oiii_hi.value),
            "bal_window": (self.bal_lo.value, self.bal_hi.value),
            "oiii_wing": self.oiii_wing.value,
            "bal_smooth_kms": self.bal_smooth.value,
        }
        for name in ("oiii_window", "bal_window"):
            lo, hi = wanted[name]
            if not (0 < lo < hi):
                label = "[O III]" if name == "oiii_window" else "BAL"
                raise ValueError(
                    f"the {label} window must run from a lower to a higher "
                    f"wavelength, not {lo:g} to {hi:g} Å"
                )
        if wanted["bal_smooth_kms"] < 0:
            raise ValueError("the smoothing must be zero or positive")
        return {k: v for k, v in wanted.items() if v != getattr(config, k)}

    def _refit(self) -> None:
        try:
            changes = self.refit_changes()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        if not changes:
            self._say("nothing changed: adjust a window, the wing or the smoothing first", True)
            return
        note = self.comment.value.strip() or None

        def job(step) -> None:
            step(1, "refitting with " + ", ".join(f"{k}={v}" for k, v in changes.items()))
            new = self.session.refit(note, advance=False, **changes)
            step(2, "drawing the refit")
            self.comment.value = ""
            self._show(new, step, new.outcome)
            self._say(
                f"refit stored as fit {new.id} (replaces fit {new.row['parent_id']}), "
                f"accepted as {new.row['reviewed_by']}; press Next to go on"
            )

        self._run(job, "refit")

    # -- drawing -----------------------------------------------------------------------------

    def _draw(self, outcome: FitOutcome | None) -> None:
        bal, oiii = bal_panel(outcome), oiii_panel(outcome)
        colours = ["#ff7f0e" if k == "BI" else "#fdd49e" for k in bal["troughs"]["kind"]]
        self.src["troughs"].data = {**bal["troughs"], "color": colours}
        self.src["bal_data"].data = bal["data"]
        self.src["continuum"].data = bal["continuum"]
        ys = [v for v in bal["continuum"]["y"] if v is not None]
        top = 1.3 * float(np.percentile(ys, 99)) if ys else 1.0
        self.bal_fig.y_range.start, self.bal_fig.y_range.end = min(0.0, -0.05 * top), top
        self.bal_fig.title.text = bal["note"]
        for name in ("data", "total", "continuum", "hbeta", "core", "wing"):
            self.src["oiii_" + name].data = oiii[name]
        self.oiii_fig.title.text = oiii["note"]
        self._update_info()

    def _update_info(self) -> None:
        s, item = self.session, self.shown
        where = f"fit {min(s.position + 1, len(s))} of {len(s)}" if len(s) else "no fits"
        who = s.reviewer or self._db_user
        self.header.value = (
            f"<b>Outflow review</b> ({html.escape(s.mode)}): {where}, "
            f"reviewing as {html.escape(who)}"
        )
        if s.queue:
            self.position.max = len(s)
            self.position.value = min(s.position + 1, len(s))
        if item is None:
            self.info.value = ""
            return
        row = item.row
        config = FitConfig.from_dict(row["config"])
        self.oiii_lo.value, self.oiii_hi.value = config.oiii_window
        self.bal_lo.value, self.bal_hi.value = config.bal_window
        self.oiii_wing.value = config.oiii_wing
        self.bal_smooth.value = config.bal_smooth_kms
        lines = [
            ("TARGETID", str(item.targetid)),
            ("z", f"{row['Z']:.4f}"),
            ("fit", f"#{item.id} ({row['kind']}, {row['created_by']})"),
            ("review", _review_text(row)),
        ]
        for name, label, err in SHOWN:
            val = row.get(name)
            if val is not None:
                text = f"{val:.4g}" if isinstance(val, float) else str(val)
                if err and row.get(err) is not None:
                    text += f" ± {row[err]:.2g}"
                lines.append((label, text))
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in lines
        )
        flags = "".join(f"<li>{html.escape(t)}</li>" for t in explain(int(row.get("FLAGS") or 0)))
        self.info.value = f"<table>{cells}</table>" + (f"<ul>{flags}</ul>" if flags else "")


def _database_user(dsn: str) -> str:
    """The role decisions are recorded under when no reviewer name is given."""
    import psycopg

    try:
        with psycopg.connect(dsn) as conn:
            return str(conn.execute("SELECT session_user").fetchone()[0])
    except psycopg.Error:
        return "your database role"


def _review_text(row: dict) -> str:
    if row.get("review_status") in (None, "pending"):
        return "pending"
    return f"{row['review_status']} by {row['reviewed_by']} at {_when(row['reviewed_at'])}"


def _when(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)


def _plain(exc: BaseException) -> str:
    """An exception as a sentence a reviewer can act on."""
    text = str(exc).strip("'\"") or type(exc).__name__
    if isinstance(exc, FileNotFoundError) or "does not exist" in text:
        return f"the spectrum file is missing ({text}); is the DR1 tree mounted?"
    if type(exc).__module__.startswith("psycopg"):
        return f"the database refused: {text}"
    return text
