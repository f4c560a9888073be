"""Batched solvers for many small fits at once: bounded Levenberg-Marquardt and
non-negative linear least squares.

Fitting spectra one by one with ``scipy.optimize.least_squares`` spends most
of its time in Python overhead and finite-difference Jacobians. Here every
step is a handful of NumPy operations over a stack of problems: the model and
its analytic Jacobian for all spectra, a batched solve of the damped normal
equations, and a per-problem accept/reject of the step with its own damping.
Bounds are enforced by projection (a step is clipped into the box).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LMResult", "levenberg_marquardt", "nonneg_lstsq", "solve_batched"]


@dataclass
class LMResult:
    """Solutions of a batch of least-squares problems.

    Attributes
    ----------
    params : ndarray (B, p)
    chi2 : ndarray (B,)
    hessian : ndarray (B, p, p)
        J^T W J at the solution (all parameters).
    converged : ndarray of bool (B,)
    at_bound : ndarray of bool (B,)
        A free kinematic parameter ended on its bound.
    n_iter : int
    """

    params: np.ndarray
    chi2: np.ndarray
    hessian: np.ndarray
    converged: np.ndarray
    at_bound: np.ndarray
    n_iter: int

    def covariance(self, i: int, free: np.ndarray) -> np.ndarray:
        """Covariance (p, p) of problem ``i``: inverse Hessian over ``free``, zeros elsewhere."""
        p = self.params.shape[1]
        out = np.zeros((p, p))
        sub = self.hessian[i][np.ix_(free, free)]
        out[np.ix_(free, free)] = np.linalg.pinv(sub)
        return out


def levenberg_marquardt(
    func: Callable,
    p0: np.ndarray,
    x: np.ndarray,
    f: np.ndarray,
    w: np.ndarray,
    extra: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    free: np.ndarray,
    *,
    max_iter: int = 60,
    rtol: float = 1e-5,
    watch: np.ndarray | None = None,
) -> LMResult:
    """Minimise sum w (model - f)^2 for a batch of problems.

    Parameters
    ----------
    func : callable
        ``func(p, x, extra) -> (model (B, P), jacobian (B, P, p))``; ``func(..., jac=False)``
        must return ``(model, None)``.
    p0 : ndarray (B, p)
        Starting parameters.
    x, f, w : ndarray (B, P)
        Abscissae, data and weights (inverse variances; 0 for padding).
    extra : ndarray (B, ...)
        Passed through to ``func`` (e.g. the LSF of each spectrum).
    lower, upper : ndarray (p,)
        Bounds.
    free : ndarray of int
        Parameters that vary; the others stay at ``p0``.
    max_iter : int
        Iterations at most.
    rtol : float
        A problem has converged when an accepted step lowers chi^2 by less than
        ``rtol * chi^2`` (or its damping has grown beyond any useful step).
    watch : ndarray of int, optional
        Parameters whose bounds are physical limits: ending on one sets ``at_bound``.
    """
    sw = np.sqrt(w)
    p = np.clip(p0.astype(float), lower, upper)
    nb, npar = p.shape
    # Only the normal equations of the current solution are kept, not its Jacobian:
    # that keeps memory and copying proportional to (B, p, p) rather than (B, P, p).
    hess = np.zeros((nb, npar, npar))
    grad = np.zeros((nb, npar))
    chi2 = np.full(nb, np.inf)

    def evaluate(sel: np.ndarray, params: np.ndarray) -> np.ndarray:
        model, jac = func(params, x[sel], extra[sel])
        r = (model - f[sel]) * sw[sel]
        jw = jac * sw[sel][..., None]
        return (
            np.sum(r * r, axis=1),
            np.matmul(np.swapaxes(jw, 1, 2), jw),
            np.einsum("bpk,bp->bk", jw, r),
        )

    all_idx = np.arange(nb)
    chi2[:], hess[:], grad[:] = evaluate(all_idx, p)
    lam = np.full(nb, 1e-3)
    done = ~np.isfinite(chi2)
    converged = np.zeros(nb, dtype=bool)
    eye = np.eye(len(free))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - reported below
        idx = np.flatnonzero(~done)
        if len(idx) == 0:
            break
        h = hess[idx][:, free][:, :, free]
        diag = np.diagonal(h, axis1=1, axis2=2)
        damped = h + lam[idx, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
        g = grad[idx][:, free]
        try:
            step = -np.linalg.solve(damped, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -np.matmul(np.linalg.pinv(damped), g[..., None])[..., 0]
        trial = p[idx].copy()
        trial[:, free] = np.clip(trial[:, free] + step, lower[free], upper[free])
        c_new, h_new, g_new = evaluate(idx, trial)
        better = np.isfinite(c_new) & (c_new < chi2[idx])
        acc = idx[better]
        gain = chi2[acc] - c_new[better]
        p[acc], chi2[acc], hess[acc], grad[acc] = (
            trial[better],
            c_new[better],
            h_new[better],
            g_new[better],
        )
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-9)
        lam[idx[~better]] *= 4.0
        settled = gain <= rtol * np.maximum(chi2[acc], 1.0)
        converged[acc[settled]] = True
        done[acc[settled]] = True
        stuck = idx[~better][lam[idx[~better]] > 1e6]
        converged[stuck] = True
        done[stuck] = True
    kin = np.intersect1d(free, watch if watch is not None else np.array([], dtype=int))
    span = upper[kin] - lower[kin]
    at_bound = np.zeros(nb, dtype=bool)
    if len(kin):
        gap = np.minimum(p[:, kin] - lower[kin], upper[kin] - p[:, kin])
        at_bound = np.any(gap < 1e-3 * span, axis=1)
    return LMResult(p, chi2, hess, converged, at_bound, n_iter)


def solve_batched(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve stacked linear systems ``m x = b`` (pseudo-inverse if one is singular)."""
    try:
        return np.linalg.solve(m, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.matmul(np.linalg.pinv(m), b[..., None])[..., 0]


def nonneg_lstsq(m: np.ndarray, b: np.ndarray, nfree: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched least squares from normal equations, all but the first ``nfree``
    coefficients kept non-negative (an active-set loop over the whole batch).

    Parameters
    ----------
    m, b : ndarray (B, p, p), (B, p)
        Normal matrices and right-hand sides.
    nfree : int
        Leading coefficients that may take any sign (e.g. a continuum polynomial).

    Returns
    -------
    coef, active : ndarray (B, p)
        Coefficients and the columns left in the fit.
    """
    p = m.shape[-1]
    diag = np.diagonal(m, axis1=-2, axis2=-1)
    # Lines outside the data carry no information: leave them out from the start.
    active = diag > 1e-6 * diag.max(axis=-1, keepdims=True)
    active[:, :nfree] = True
    eye = np.eye(p, dtype=bool)
    coef = np.zeros(b.shape)
    for _ in range(p):
        both = active[:, :, None] & active[:, None, :]
        mm = np.where(both, m, 0.0) + np.where(eye & ~active[:, None, :], 1.0, 0.0)
        coef = solve_batched(mm, np.where(active, b, 0.0))
        neg = (coef < 0) & active
        neg[:, :nfree] = False
        if not neg.any():
            break
        active &= ~neg
    return np.where(active, coef, 0.0), active
