"""Interstellar extinction: the Cardelli, Clayton & Mathis (1989) law.

One implementation for the mock (Milky Way and intrinsic reddening) and for the
projects (Milky Way dereddening with the catalog's EBV).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ccm89"]


def ccm89(wave: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989): near-IR, optical and UV.

    Parameters
    ----------
    wave : ndarray
        Wavelength, Angstrom (valid 1000 Angstrom - 3.3 micron; shorter waves get the
        1000 Angstrom value).
    r_v : float
        Total-to-selective extinction ratio.
    """
    x = 1e4 / np.asarray(wave, dtype=np.float64)
    a = np.zeros_like(x)
    b = np.zeros_like(x)
    ir = x < 1.1
    a[ir] = 0.574 * x[ir] ** 1.61
    b[ir] = -0.527 * x[ir] ** 1.61
    opt = (x >= 1.1) & (x < 3.3)
    y = x[opt] - 1.82
    a[opt] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b[opt] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    uv = x >= 3.3
    xu = np.minimum(x[uv], 10.0)
    fa = np.where(xu > 5.9, -0.04473 * (xu - 5.9) ** 2 - 0.009779 * (xu - 5.9) ** 3, 0.0)
    fb = np.where(xu > 5.9, 0.2130 * (xu - 5.9) ** 2 + 0.1207 * (xu - 5.9) ** 3, 0.0)
    a[uv] = 1.752 - 0.316 * xu - 0.104 / ((xu - 4.67) ** 2 + 0.341) + fa
    b[uv] = -3.090 + 1.825 * xu + 1.206 / ((xu - 4.62) ** 2 + 0.263) + fb
    return a + b / r_v
