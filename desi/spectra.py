"""Spectra by TARGETID: found through the catalog, read from coadd files, merged into one
:class:`CoaddSpectra`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from .coadd import ArmSpectra, CoaddFile, CoaddSpectra

__all__ = ["merge_spectra", "read_spectra"]


def _stack(tables: list[Table | None]) -> Table | None:
    present = [t for t in tables if t is not None]
    if not present:
        return None
    # Files of different surveys differ in targeting columns (SV3_DESI_TARGET...): outer join.
    return vstack(present, join_type="outer", metadata_conflicts="silent")


def merge_spectra(parts: Sequence[CoaddSpectra], order: Sequence[int]) -> CoaddSpectra:
    """Concatenate spectra of several files and put them in the TARGETID order ``order``.

    Parameters
    ----------
    parts : sequence of CoaddSpectra
        Spectra read from different coadd files (same wavelength grids, as in DR1).
    order : sequence of int
        TARGETIDs in the wanted order; each must be in exactly one part.

    Raises
    ------
    ValueError
        If the parts have different wavelength grids or arms.
    """
    if not parts:
        return CoaddSpectra(fibermap=Table({"TARGETID": np.zeros(0, dtype=np.int64)}), arms={})
    arms = list(parts[0].arms)
    for p in parts[1:]:
        if list(p.arms) != arms:
            raise ValueError("spectra read with different arms cannot be merged")
        for a in arms:
            if not np.array_equal(p.arms[a].wave, parts[0].arms[a].wave):
                raise ValueError(f"coadd files have different {a} wavelength grids")
    tid = np.concatenate([p.targetid for p in parts])
    where = {int(t): i for i, t in enumerate(tid)}
    idx = np.array([where[int(t)] for t in order], dtype=np.int64)
    fibermap = _stack([p.fibermap for p in parts])[idx]
    out_arms = {}
    for a in arms:
        first = parts[0].arms[a]

        def cat(attr: str, a: str = a) -> np.ndarray | None:
            values = [getattr(p.arms[a], attr) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)[idx]

        out_arms[a] = ArmSpectra(
            wave=first.wave,
            flux=cat("flux"),
            ivar=cat("ivar"),
            mask=cat("mask"),
            resolution=cat("resolution"),
        )
    scores = _stack([p.scores for p in parts])
    exp = _stack([p.exp_fibermap for p in parts])
    if exp is not None:
        exp = exp[np.isin(np.asarray(exp["TARGETID"]), np.asarray(order, dtype=np.int64))]
    return CoaddSpectra(
        fibermap=fibermap,
        arms=out_arms,
        exp_fibermap=exp,
        scores=scores[idx] if scores is not None and len(scores) == len(tid) else scores,
        meta={"HPXPIXEL": sorted({p.meta.get("HPXPIXEL") for p in parts if p.meta})},
    )


def read_spectra(
    query: Callable[..., Table],
    targetids: Sequence[int] | np.ndarray,
    data_root: Path | None = None,
    arms: str = "BRZ",
    resolution: bool = False,
    missing: str = "raise",
) -> CoaddSpectra:
    """Spectra of TARGETIDs through the catalog's spectra index (see :meth:`Catalog.spectra`).

    Parameters
    ----------
    query : callable
        ``Catalog.query``.
    targetids, arms, resolution, missing
        As in :meth:`Catalog.spectra`.
    data_root : Path, optional
        DATA_ROOT to read from; default: the one each file was ingested from.
    """
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', not {missing!r}")
    tids = np.unique(np.asarray(targetids, dtype=np.int64).ravel(), return_index=True)
    wanted = np.asarray(targetids, dtype=np.int64).ravel()[np.sort(tids[1])]
    found = query(
        "SELECT DISTINCT ON (s.targetid) s.targetid, f.path, f.data_root, s.coadd_row "
        "FROM dr1.spectra s JOIN dr1.ingest_files f USING (file_id) "
        "LEFT JOIN dr1.zpix p ON p.targetid = s.targetid AND p.survey = s.survey "
        "AND p.program = s.program WHERE s.targetid = ANY(%s) "
        "ORDER BY s.targetid, p.targetid IS NULL, s.survey, s.program",
        (wanted.tolist(),),
        limit=len(wanted) + 1,
    )
    have = set(np.asarray(found["targetid"]).tolist())
    lost = [int(t) for t in wanted if int(t) not in have]
    if lost and missing == "raise":
        raise KeyError(
            f"no spectrum in the catalog for {len(lost)} TARGETID(s): {lost[:10]}"
            + (" ..." if len(lost) > 10 else "")
            + "; pass missing='skip' to read the others"
        )
    parts, files = [], []
    for path in sorted(set(found["path"])):
        sel = np.asarray(found["path"]) == path
        root = data_root or Path(str(found["data_root"][sel][0]))
        full = root / path
        with CoaddFile(full) as f:
            parts.append(
                f.read(rows=np.asarray(found["coadd_row"][sel]), arms=arms, resolution=resolution)
            )
        files.append(str(full))
    order = [int(t) for t in wanted if int(t) in have]
    out = merge_spectra(parts, order)
    out.meta.update(files=files, missing=lost)
    return out
