"""Shared fixtures of the DR1 data-layer tests: one small mock DR1 per session."""

from __future__ import annotations

import pytest
from desilab.desi import DR1Layout, generate_mock

MOCK_SEED = 20240611


@pytest.fixture(scope="session")
def mock_dr1(tmp_path_factory):
    """A small mock DR1 (about 10 healpix pixels) with spectra for many targets."""
    outdir = tmp_path_factory.mktemp("mock")
    summary = generate_mock(
        outdir,
        n_qso=400,
        n_galaxy=2500,
        n_star=150,
        seed=MOCK_SEED,
        progress=False,
        qso_spectra_fraction=0.5,
        galaxy_spectra_fraction=0.05,
        star_spectra_fraction=0.3,
        workers=1,
    )
    return summary, DR1Layout(summary.data_root)
