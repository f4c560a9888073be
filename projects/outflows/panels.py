"""What the OutflowExplorer draws, as plain data: pure functions of a fit, tested headless."""

from __future__ import annotations

import numpy as np

from .bal import ION_LAMBDA
from .batch import FitOutcome
from .continuum import C_KMS
from .flags import Flag, explain

__all__ = ["bal_panel", "oiii_panel"]

_EMPTY_LINE = {"x": [], "y": []}


def _finite(a) -> list:
    """JSON-safe list: NaN and inf become null, which bokeh draws as gaps."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=float)]


def bal_panel(outcome: FitOutcome | None) -> dict:
    """What the BAL panel draws for a fit.

    Returns
    -------
    dict
        ``data`` (x: rest wavelength, y: rebinned flux), ``continuum`` (x, y, lo, hi),
        ``troughs`` (left, right, kind: BI or AI, ion) and ``note``, a sentence
        saying why nothing is drawn when that is the case.
    """
    empty = {
        "data": dict(_EMPTY_LINE),
        "continuum": {"x": [], "y": [], "lo": [], "hi": []},
        "troughs": {"left": [], "right": [], "kind": [], "ion": []},
    }
    bal = outcome.bal if outcome is not None else None
    if bal is None:
        return {**empty, "note": "BAL: not measured (redshift outside 1.57-5)"}
    cont = bal.continuum
    if cont is None or not cont.ok:
        return {**empty, "note": "BAL: " + "; ".join(explain(int(bal.flags) | Flag.NO_COVERAGE))}
    x = cont.grid.centers
    data = np.where(cont.ivar > 0, cont.flux, np.nan)
    err = np.nan_to_num(cont.model_err)
    troughs = {"left": [], "right": [], "kind": [], "ion": []}
    for t in bal.troughs:
        lam0 = ION_LAMBDA[t.ion]
        # Velocities are outflow speeds: v = -c (lambda - lambda0) / lambda0.
        troughs["left"].append(lam0 * (1 - t.vmax / C_KMS))
        troughs["right"].append(lam0 * (1 - t.vmin / C_KMS))
        troughs["kind"].append(t.kind)
        troughs["ion"].append(t.ion)
    return {
        "data": {"x": _finite(x), "y": _finite(data)},
        "continuum": {
            "x": _finite(x),
            "y": _finite(cont.model),
            "lo": _finite(cont.model - err),
            "hi": _finite(cont.model + err),
        },
        "troughs": troughs,
        "note": f"BAL: {sum(k == 'BI' for k in troughs['kind'])} BI trough(s)",
    }


def oiii_panel(outcome: FitOutcome | None) -> dict:
    """What the [O III] panel draws: ``data`` and one line per model component.

    Components are ``total``, ``continuum``, ``hbeta``, ``core`` and ``wing``
    (empty lists where absent); ``note`` says why nothing is drawn.
    """
    parts = ("total", "continuum", "hbeta", "core", "wing")
    out = {"data": dict(_EMPTY_LINE), **{p: dict(_EMPTY_LINE) for p in parts}}
    fit = outcome.oiii if outcome is not None else None
    if fit is None:
        return {**out, "note": "[O III]: not measured (redshift above 0.95)"}
    if fit.wave is None or not len(fit.wave):
        return {**out, "note": "[O III]: " + "; ".join(explain(int(fit.flags)) or ["no data"])}
    x = _finite(fit.wave)
    out["data"] = {"x": x, "y": _finite(np.where(fit.ivar > 0, fit.flux, np.nan))}
    for p in parts:
        if p in fit.model and (p != "wing" or fit.values.get("OIII_WING")):
            out[p] = {"x": x, "y": _finite(fit.model[p])}
    wing = "with a wing" if fit.values.get("OIII_WING") else "no wing"
    return {**out, "note": f"[O III]: {wing}"}
