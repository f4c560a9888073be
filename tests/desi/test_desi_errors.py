"""Missing, corrupt and truncated files give DR1FormatError naming the file and the HDU."""

from __future__ import annotations

import numpy as np
import pytest
from desilab.desi import (
    CoaddFile,
    DR1FormatError,
    read_coadd,
    read_fastspec,
    read_redrock,
    read_voidfinder,
    read_zpix,
)


@pytest.fixture(scope="module")
def coadd_path(mock_dr1):
    _, layout = mock_dr1
    return next(layout.iter_healpix("main", "dark")).coadd


def _damaged(src, dst, *, keep=None, garbage_at=None):
    data = bytearray(src.read_bytes())
    if keep is not None:
        data = data[:keep]
    if garbage_at is not None:
        rng = np.random.default_rng(0)
        data[garbage_at : garbage_at + 2880] = rng.integers(0, 256, 2880, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_missing_file(tmp_path):
    path = tmp_path / "coadd-main-dark-1.fits"
    with pytest.raises(DR1FormatError) as err:
        read_coadd(path)
    msg = str(err.value)
    assert str(path) in msg and "HDU FIBERMAP" in msg and "does not exist" in msg
    assert isinstance(err.value, ValueError) and err.value.hdu == "FIBERMAP"
    with pytest.raises(DR1FormatError, match="HDU ZCATALOG"):
        read_zpix(tmp_path / "zpix-main-dark.fits")


def test_random_bytes(tmp_path):
    path = tmp_path / "redrock-main-dark-1.fits"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(DR1FormatError) as err:
        read_redrock(path)
    msg = str(err.value)
    assert str(path) in msg and "HDU PRIMARY" in msg and "corrupt or not FITS" in msg
    for reader in (read_zpix, read_voidfinder, read_fastspec, read_coadd):
        with pytest.raises(DR1FormatError, match="HDU PRIMARY"):
            reader(path)


def test_garbage_inside_a_header(tmp_path, coadd_path):
    # Overwrite the block holding the FIBERMAP header: the damaged HDU is named.
    path = _damaged(coadd_path, tmp_path / "c.fits", garbage_at=2880)
    with pytest.raises(DR1FormatError) as err:
        CoaddFile(path)
    assert str(path) in str(err.value) and "HDU #1 (after PRIMARY)" in str(err.value)
    assert "corrupt" in str(err.value)


def test_truncated_coadd_names_the_hdu(tmp_path, coadd_path):
    with CoaddFile(coadd_path) as f:
        loc = f._hdul["R_FLUX"].fileinfo()["datLoc"]
    path = _damaged(coadd_path, tmp_path / "t.fits", keep=loc + 1000)
    with pytest.raises(DR1FormatError) as err:
        read_coadd(path)
    msg = str(err.value)
    assert str(path) in msg and "HDU R_FLUX" in msg and "truncated" in msg


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_zpix_and_redrock(tmp_path, mock_dr1, cut):
    _, layout = mock_dr1
    src = layout.zpix("main", "bright")
    path = _damaged(src, tmp_path / src.name, keep=int(src.stat().st_size * cut))
    with pytest.raises(DR1FormatError) as err:
        read_zpix(path)
    assert str(path) in str(err.value) and "HDU ZCATALOG" in str(err.value)
    rr = next(layout.iter_healpix("main", "bright")).redrock
    path = _damaged(rr, tmp_path / rr.name, keep=int(rr.stat().st_size * cut))
    with pytest.raises(DR1FormatError, match=r"HDU (REDSHIFTS|FIBERMAP|EXP_FIBERMAP|TSNR2)"):
        read_redrock(path)


def test_missing_hdu_and_column(tmp_path, coadd_path):
    from astropy.io import fits

    with fits.open(coadd_path) as hdul:
        del hdul["Z_IVAR"]
        hdul.writeto(tmp_path / "nohdu.fits")
    with pytest.raises(DR1FormatError, match="HDU Z_IVAR is missing"):
        read_coadd(tmp_path / "nohdu.fits")
    with fits.open(coadd_path) as hdul:
        hdul["FIBERMAP"].columns.del_col("TARGETID")
        hdul.writeto(tmp_path / "nocol.fits")
    with pytest.raises(DR1FormatError) as err:
        read_coadd(tmp_path / "nocol.fits")
    assert "HDU FIBERMAP" in str(err.value) and "column TARGETID" in str(err.value)
