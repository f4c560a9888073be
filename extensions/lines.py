"""Spectral lines marked by the spectrum explorer (vacuum rest wavelengths, Angstrom)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    name: str
    wave: float
    emission: bool = True


LINES: tuple[Line, ...] = (
    Line("Lyβ", 1025.72),
    Line("Lyα", 1215.67),
    Line("N V", 1240.14),
    Line("Si IV", 1396.76),
    Line("C IV", 1549.06),
    Line("He II", 1640.42),
    Line("C III]", 1908.73),
    Line("Mg II", 2798.75),
    Line("[O II]", 3728.48),
    Line("[Ne III]", 3870.16),
    Line("Hδ", 4102.89),
    Line("Hγ", 4341.68),
    Line("Hβ", 4862.68),
    Line("[O III]", 4960.30),
    Line("[O III]", 5008.24),
    Line("He I", 5877.25),
    Line("[O I]", 6302.05),
    Line("[N II]", 6549.86),
    Line("Hα", 6564.61),
    Line("[N II]", 6585.27),
    Line("[S II]", 6718.29),
    Line("[S II]", 6732.67),
    Line("Ca K", 3934.78, emission=False),
    Line("Ca H", 3969.59, emission=False),
    Line("G band", 4305.61, emission=False),
    Line("Mg b", 5176.70, emission=False),
    Line("Na D", 5895.60, emission=False),
)
