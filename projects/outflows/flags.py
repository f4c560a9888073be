"""Automatic quality flags of the outflow fits: what a human should look at.

Each fit gets a bit mask; any bit in :data:`REVIEW_FLAGS` sends the fit to the
review queue (:mod:`.review`). The bits are stored as one integer column,
``FLAGS``, next to the measurements.
"""

from __future__ import annotations

import enum

__all__ = ["EXPLANATIONS", "REVIEW_FLAGS", "Flag", "describe", "explain"]


class Flag(enum.IntFlag):
    """Quality bits of an outflow fit."""

    #: The spectrum does not cover the window the measurement needs (or z is outside it).
    NO_COVERAGE = 1
    #: Si IV window not covered (C IV measured).
    NO_SIIV = 2
    #: Median S/N per pixel in the window below the threshold (2 for BAL, see oiii.py).
    LOW_SNR = 4
    #: Reduced chi^2 of the continuum fit above 3: the model misses structure.
    BAD_CONTINUUM = 8
    #: Reduced chi^2 of the [O III] fit above 2.
    BAD_LINE_FIT = 16
    #: The optimiser failed or returned non-finite values.
    FIT_FAILED = 32
    #: The clipping iterations did not settle.
    NOT_CONVERGED = 64
    #: A parameter ended at its bound (e.g. wing velocity at the search limit).
    AT_BOUND = 128
    #: [O III] not detected (integrated S/N below 3).
    NO_LINE = 256
    #: The b/r or r/z arms disagree where they overlap (flux calibration jump).
    ARM_MISMATCH = 512
    #: The spectrum has NaN or infinite values (set to ivar = 0 and fitted without them).
    BAD_PIXELS = 1024


#: Bits that put a fit in the review queue.
REVIEW_FLAGS = (
    Flag.LOW_SNR
    | Flag.BAD_CONTINUUM
    | Flag.BAD_LINE_FIT
    | Flag.FIT_FAILED
    | Flag.NOT_CONVERGED
    | Flag.AT_BOUND
    | Flag.ARM_MISMATCH
)


def describe(flags: int) -> list[str]:
    """Names of the bits set in ``flags``."""
    return [f.name for f in Flag if f.name and int(flags) & int(f)]


#: What each bit means, in plain words (shown to reviewers).
EXPLANATIONS = {
    Flag.NO_COVERAGE: "the spectrum does not cover the window this measurement needs",
    Flag.NO_SIIV: "Si IV is outside the spectrum (C IV was measured)",
    Flag.LOW_SNR: "the signal-to-noise ratio in the fitted window is low",
    Flag.BAD_CONTINUUM: "the continuum model misses structure (reduced chi2 above 3)",
    Flag.BAD_LINE_FIT: "the [O III] model misses structure (reduced chi2 above 2)",
    Flag.FIT_FAILED: "the optimiser failed or returned non-finite values",
    Flag.NOT_CONVERGED: "the absorption clipping did not settle",
    Flag.AT_BOUND: "a line parameter ended at its limit",
    Flag.NO_LINE: "[O III] is not detected",
    Flag.ARM_MISMATCH: "the spectrograph arms disagree where they overlap",
    Flag.BAD_PIXELS: "the spectrum has NaN or infinite values (left out of the fit)",
}


def explain(flags: int) -> list[str]:
    """Plain-language sentences for the bits set in ``flags`` (review flags first)."""
    bits = [f for f in Flag if f.name and int(flags) & int(f)]
    bits.sort(key=lambda f: not (int(f) & int(REVIEW_FLAGS)))
    return [f"{f.name}: {EXPLANATIONS[f]}" for f in bits]
