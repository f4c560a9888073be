"""Human review of the automatic fits: the logic behind the OutflowExplorer widget.

A :class:`ReviewSession` steps through fits of ``results.qso_outflows`` -
those the quality flags sent for review, a random (seeded) selection, or all -
and records each decision with who and when:

* :meth:`ReviewSession.accept` / :meth:`ReviewSession.reject`;
* :meth:`ReviewSession.refit` with adjusted windows or components (any
  :class:`~desilab.projects.outflows.batch.FitConfig` setting, e.g.
  ``oiii_window=(4800, 5100)`` or ``oiii_wing="on"``): the new fit is stored as
  a ``refit`` row pointing at the original, which is marked ``refit``.

Decisions live in the database, so a new session (another day, another
reviewer) sees them: already-decided fits leave the queue unless asked for.
:meth:`ReviewSession.view` re-reads the spectrum and redoes the fit with the
row's own settings, giving the arrays a widget draws (data, continuum,
components, troughs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from desilab.desi import DR1Layout

from .batch import FitConfig, FitOutcome, fit_spectra
from .energetics import MODEL_VERSION, Assumptions
from .flags import describe
from .results import decisions, read_results, record_decision, write_results
from .spectra import read_qso_spectra

__all__ = ["MODES", "ReviewItem", "ReviewSession"]

MODES = ("flagged", "random", "all")


@dataclass
class ReviewItem:
    """One fit in the queue.

    Attributes
    ----------
    row : dict
        The stored result row (upper-case measurement names, lower-case bookkeeping).
    outcome : FitOutcome or None
        The fit redone with its stored settings (after :meth:`ReviewSession.view`).
    """

    row: dict
    outcome: FitOutcome | None = field(default=None, repr=False)

    @property
    def id(self) -> int:
        """Row id in ``results.qso_outflows``."""
        return int(self.row["id"])

    @property
    def targetid(self) -> int:
        return int(self.row["TARGETID"])

    @property
    def flags(self) -> list[str]:
        """Names of the quality flags that are set."""
        return describe(int(self.row.get("FLAGS") or 0))

    @property
    def status(self) -> str:
        return str(self.row.get("review_status"))


class ReviewSession:
    """Step through fits and record accept / reject / refit decisions.

    Parameters
    ----------
    dsn : str
        The reviewer's database connection (DESILAB_DATABASE_URL).
    layout : DR1Layout, optional
        DR1 tree, needed for :meth:`view` and :meth:`refit` (they re-read spectra).
    reviewer : str, optional
        Name recorded with decisions (default: the database user).
    mode : {'flagged', 'random', 'all'}
        Fits that need review (quality flags), a seeded random order of all
        automatic fits, or all automatic fits in id order.
    seed : int
        For ``mode='random'``.
    include_reviewed : bool
        Also queue fits that already have a decision.
    assumptions_hash, model_version : str, optional
        Restrict to fits made with these (default: the current model version).
    limit : int, optional
        Queue length at most.
    """

    def __init__(
        self,
        dsn: str,
        layout: DR1Layout | None = None,
        *,
        reviewer: str | None = None,
        mode: str = "flagged",
        seed: int = 0,
        include_reviewed: bool = False,
        assumptions_hash: str | None = None,
        model_version: str | None = MODEL_VERSION,
        limit: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.dsn = dsn
        self.layout = layout
        self.reviewer = reviewer
        self.mode = mode
        frame = read_results(dsn, kind="auto", model_version=model_version,
                             assumptions_hash=assumptions_hash)  # fmt: skip
        if mode == "flagged" and len(frame):
            frame = frame[frame["NEEDS_REVIEW"].astype(bool)]
        if not include_reviewed and len(frame):
            frame = frame[frame["review_status"] == "pending"]
        ids = [int(i) for i in frame["id"]] if len(frame) else []
        if mode == "random":
            ids = [int(i) for i in np.random.default_rng(seed).permutation(ids)]
        self.queue: list[int] = ids[:limit] if limit else ids
        self.position = 0
        self._cache: dict[int, ReviewItem] = {}

    # -- navigation ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def done(self) -> bool:
        """True once every queued fit has been passed."""
        return self.position >= len(self.queue)

    def current(self) -> ReviewItem | None:
        """The fit under review (None past the end of the queue)."""
        if self.done:
            return None
        return self._item(self.queue[self.position])

    def next(self) -> ReviewItem | None:
        """Move on; returns the new current fit."""
        self.position = min(self.position + 1, len(self.queue))
        return self.current()

    def previous(self) -> ReviewItem | None:
        """Step back one fit."""
        self.position = max(self.position - 1, 0)
        return self.current()

    def goto(self, index: int) -> ReviewItem | None:
        """Jump to queue position ``index``."""
        self.position = int(np.clip(index, 0, len(self.queue)))
        return self.current()

    def _item(self, result_id: int, refresh: bool = False) -> ReviewItem:
        if refresh or result_id not in self._cache:
            frame = read_results(self.dsn, ids=[result_id])
            if not len(frame):
                raise KeyError(f"fit {result_id} is no longer in results.qso_outflows")
            row = {k: _py(v) for k, v in frame.iloc[0].to_dict().items()}
            self._cache[result_id] = ReviewItem(row)
        return self._cache[result_id]

    # -- display ------------------------------------------------------------------------------

    def view(self, item: ReviewItem | None = None) -> FitOutcome:
        """Redo ``item``'s fit (default: the current one) with its stored settings.

        Returns the FitOutcome with the spectrum, the BAL continuum and troughs
        and the [O III] components, for plotting.
        """
        item = item or self.current()
        if item is None:
            raise IndexError("the review queue is exhausted")
        if item.outcome is None:
            config = FitConfig.from_dict(item.row["config"])
            assumptions = Assumptions.from_dict(item.row["assumptions"])
            item.outcome = self._fit(item.row, config, assumptions)
        return item.outcome

    def _fit(self, row: dict, config: FitConfig, assumptions: Assumptions) -> FitOutcome:
        if self.layout is None:
            raise ValueError("this session has no DR1 layout: pass layout= to re-read spectra")
        path = self.layout.coadd(row["SURVEY"], row["PROGRAM"], int(row["HEALPIX"]))
        ebv = row.get("EBV")
        spectra, found = read_qso_spectra(
            str(path), np.array([row["TARGETID"]]), np.array([row["Z"]]),
            None if ebv is None else np.array([ebv]),
        )  # fmt: skip
        if not found[0]:
            raise KeyError(f"TARGETID {row['TARGETID']} is not in {path}")
        outcome = fit_spectra(spectra, config, assumptions, keep_models=True)[0]
        outcome.row.update(SURVEY=row["SURVEY"], PROGRAM=row["PROGRAM"],
                           HEALPIX=int(row["HEALPIX"]))  # fmt: skip
        return outcome

    # -- decisions ----------------------------------------------------------------------------

    def _decide(self, decision: str, note: str | None, refit_id: int | None = None) -> dict:
        item = self.current()
        if item is None:
            raise IndexError("the review queue is exhausted")
        history = record_decision(self.dsn, item.id, decision, who=self.reviewer, note=note,
                                  refit_id=refit_id)  # fmt: skip
        self._item(item.id, refresh=True)
        return history

    def accept(self, note: str | None = None, *, advance: bool = True) -> dict:
        """Accept the current fit; returns the decision record."""
        out = self._decide("accepted", note)
        if advance:
            self.next()
        return out

    def reject(self, note: str | None = None, *, advance: bool = True) -> dict:
        """Reject the current fit; returns the decision record."""
        out = self._decide("rejected", note)
        if advance:
            self.next()
        return out

    def refit(self, note: str | None = None, *, advance: bool = True, **changes) -> ReviewItem:
        """Fit the current QSO again with changed settings and store the refit.

        Parameters
        ----------
        note : str, optional
        advance : bool
            Move to the next fit afterwards.
        **changes
            :class:`FitConfig` fields to change, e.g. ``oiii_window=(4800, 5100)``,
            ``oiii_wing='off'``, ``bal_window=(1300, 2300)``, ``bal_smooth_kms=600``.

        Returns
        -------
        ReviewItem
            The refit (stored with ``kind='refit'``, accepted by this reviewer).
        """
        item = self.current()
        if item is None:
            raise IndexError("the review queue is exhausted")
        config = FitConfig.from_dict(item.row["config"]).replace(**changes)
        assumptions = Assumptions.from_dict(item.row["assumptions"])
        outcome = self._fit(item.row, config, assumptions)
        new_id = write_results(self.dsn, [outcome.row], assumptions=assumptions, config=config,
                               run_id=item.row.get("run_id"), kind="refit", parent_id=item.id,
                               who=self.reviewer)[0]  # fmt: skip
        self._decide("refit", note, refit_id=new_id)
        record_decision(self.dsn, new_id, "accepted", who=self.reviewer, note=note)
        refit_item = self._item(new_id)
        refit_item.outcome = outcome
        if advance:
            self.next()
        return refit_item

    def history(self, targetid: int | None = None) -> list[dict]:
        """Every decision on a QSO (default: the current one), oldest first."""
        if targetid is None:
            item = self.current()
            if item is None:
                return []
            targetid = item.targetid
        return decisions(self.dsn, targetid=targetid)

    def summary(self) -> dict:
        """Queue length, position, and the decisions recorded on the queued fits."""
        frame = read_results(self.dsn, ids=self.queue) if self.queue else None
        counts = {}
        if frame is not None and len(frame):
            counts = {str(k): int(v) for k, v in frame["review_status"].value_counts().items()}
        return {"queued": len(self.queue), "position": self.position, "status": counts}


def _py(value):
    """pandas/NumPy scalars to plain Python (NaN -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
