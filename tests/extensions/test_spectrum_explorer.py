"""SpectrumExplorer: headless logic, the widget's wiring, and VI saved to PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest
from desilab.desi.roles import ensure_user_role
from desilab.desi.vi import inspections, save_inspection
from desilab.extensions.lines import LINES
from desilab.extensions.spectra import SpectrumExplorerModel, smooth
from desilab.extensions.spectrum_widget import SpectrumExplorer

HALPHA = next(line.wave for line in LINES if line.name == "Hα")


def fake_spectra(n=3, z=0.1):
    wave = {"B": np.arange(3600.0, 5800.0, 0.8), "R": np.arange(5760.0, 7620.0, 0.8)}
    flux = {a: np.ones((n, w.size)) for a, w in wave.items()}
    ivar = {a: np.full((n, w.size), 4.0) for a, w in wave.items()}
    mask = {a: np.zeros((n, w.size), dtype=np.uint32) for a, w in wave.items()}
    ivar["R"][:, 100] = 0.0
    mask["B"][:, 50] = 4
    flux["B"][:, 50] = 1e6  # a cosmic ray the mask flags
    info = [
        {"TARGETID": 1000 + i, "Z": z + 0.01 * i, "SPECTYPE": "GALAXY", "ZWARN": 0}
        for i in range(n)
    ]
    return wave, flux, ivar, mask, info


def test_lines_follow_redshift_and_frame():
    model = SpectrumExplorerModel.from_arrays(*fake_spectra())
    assert model.z == pytest.approx(0.1)
    halpha = [x for x, name, _ in model.line_markers() if name == "Hα"]
    assert halpha == [pytest.approx(HALPHA * 1.1)]
    model.set_redshift(0.15)
    assert [x for x, n, _ in model.line_markers() if n == "Hα"] == [pytest.approx(HALPHA * 1.15)]
    model.set_frame("rest")
    assert [x for x, n, _ in model.line_markers() if n == "Hα"] == [pytest.approx(HALPHA)]
    assert model.x_range()[0] == pytest.approx(3600.0 / 1.15)
    model.next()
    assert model.z == pytest.approx(0.11), "a new target starts at its catalog redshift"
    with pytest.raises(ValueError, match="outside"):
        model.set_redshift(12)
    with pytest.raises(IndexError, match="there are 3"):
        model.go(3)


def test_masked_pixels_are_shown_and_carry_no_weight():
    model = SpectrumExplorerModel.from_arrays(*fake_spectra())
    masked = model.masked_points()
    assert set(np.round(masked["x"], 1)) == {
        round(3600.0 + 50 * 0.8, 1),
        round(5760.0 + 100 * 0.8, 1),
    }
    model.set_smoothing(11)
    data = model.arm_data()
    assert np.nanmax(data["B"]["flux"]) == pytest.approx(1.0), (
        "the flagged spike is not smoothed in"
    )
    assert np.all(data["B"]["hi"] > data["B"]["lo"])


def test_smoothing_is_inverse_variance_weighted():
    flux = np.array([1.0, 3.0, 1.0])
    out, err = smooth(flux, np.array([1.0, 0.0, 1.0]), 3)
    assert out[1] == pytest.approx(1.0)
    out, err = smooth(flux, np.array([1.0, 2.0, 1.0]), 3)
    assert out[1] == pytest.approx((1 + 6 + 1) / 4)


def test_widget_steps_and_draws_headless():
    explorer = SpectrumExplorer.from_arrays(*fake_spectra())
    assert explorer.sources["B"].data["flux"][0] == pytest.approx(1.0)
    assert "Hα" in explorer.line_source.data["name"]
    explorer.next_button.click()
    deadline = time.monotonic() + 10
    while explorer.model.index != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert explorer.position.value == 2
    assert "1001" in explorer.info.value
    explorer.z_box.value = 0.2
    assert explorer.model.z == pytest.approx(0.2)
    explorer.vi_flag.value = "good"
    explorer.vi_save.click()
    assert "not connected to a database" in explorer.status.value


def test_vi_is_saved_as_the_connected_user_only(catalog_db):
    alice = ensure_user_role(catalog_db, "vi-alice")
    bob = ensure_user_role(catalog_db, "vi-bob")
    saved = []
    model = SpectrumExplorerModel.from_arrays(
        *fake_spectra(),
        save_vi=lambda tid, flag, comment, z: (
            saved.append(save_inspection(alice, tid, flag, comment, z, source="test")) or saved[-1]
        ),
    )
    model.set_redshift(0.123)
    ident = model.save_vi("wrong-z", "  Halpha is at 7370  ")
    rows = inspections(bob, [1000])
    assert ident in list(rows["id"])
    row = rows[list(rows["id"]).index(ident)]
    assert (row["inspector"], row["flag"], row["comment"]) == (
        "desi_vi_alice",
        "wrong-z",
        "Halpha is at 7370",
    )
    assert row["z_vi"] == pytest.approx(0.123)
    with psycopg.connect(bob) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO vi.inspections (targetid, inspector, flag) "
            "VALUES (1, 'desi_vi_alice', 'bad')"
        )
    with pytest.raises(ValueError, match="unknown flag"):
        save_inspection(alice, 1, "meh")


def model_legend_visible(explorer) -> bool:
    [item] = [i for i in explorer.fig.legend[0].items if getattr(i.label, "value", None) == "model"]
    return item.visible


def test_the_model_appears_in_the_legend_only_when_given():
    wave, flux, ivar, mask, info = fake_spectra()
    assert not model_legend_visible(SpectrumExplorer.from_arrays(wave, flux, ivar, mask, info))
    model = {arm: np.ones_like(f) for arm, f in flux.items()}
    explorer = SpectrumExplorer.from_arrays(wave, flux, ivar, mask, info, model=model)
    assert model_legend_visible(explorer)
