"""Column definitions of the DR1 (iron) files, from desidatamodel.

Each table is a list of ``(name, dtype, unit)``; :func:`dtype_of` and
:func:`units_of` turn one into a NumPy dtype and a TUNIT mapping. Names, types
and units follow desidatamodel (``healpix/.../coadd``, ``redrock``,
``zcatalog/v1/zpix``), FastSpecFit (v2.x layout: FASTSPEC + METADATA) and the
DESIVAST VoidFinder files (MAXIMALS, HOLES).
"""

from __future__ import annotations

import numpy as np

Column = tuple[str, str, str]

NSIDE = 64
NEST = True
SPECPROD = "iron"
ZCATVER = "v1"
FLUX_UNIT = "10**-17 erg/(s cm2 Angstrom)"
IVAR_UNIT = "10**+34 (s2 cm4 Angstrom2) / erg2"

#: Arm name -> (first wavelength, last wavelength, number of pixels); 0.8 A steps.
ARMS: dict[str, tuple[float, float, int]] = {
    "B": (3600.0, 5800.0, 2751),
    "R": (5760.0, 7620.0, 2326),
    "Z": (7520.0, 9824.0, 2881),
}
NDIAG = 11

_TSNR2_TARGETS = ("GPBDARK", "ELG", "GPBBRIGHT", "LYA", "BGS", "GPBBACKUP", "QSO", "LRG")
TSNR2_COLUMNS: list[Column] = [
    (f"TSNR2_{t}_{arm}", "f4", "") for arm in "BRZ" for t in _TSNR2_TARGETS
] + [(f"TSNR2_{t}", "f4", "") for t in _TSNR2_TARGETS]

_PHOT: list[Column] = [
    ("FLUX_G", "f4", "nanomaggy"),
    ("FLUX_R", "f4", "nanomaggy"),
    ("FLUX_Z", "f4", "nanomaggy"),
    ("FLUX_IVAR_G", "f4", "nanomaggy^-2"),
    ("FLUX_IVAR_R", "f4", "nanomaggy^-2"),
    ("FLUX_IVAR_Z", "f4", "nanomaggy^-2"),
]

#: FIBERMAP of healpix coadd and redrock files (main survey).
FIBERMAP: list[Column] = [
    ("TARGETID", "i8", ""),
    ("COADD_FIBERSTATUS", "i4", ""),
    ("TARGET_RA", "f8", "deg"),
    ("TARGET_DEC", "f8", "deg"),
    ("PMRA", "f4", "mas yr^-1"),
    ("PMDEC", "f4", "mas yr^-1"),
    ("REF_EPOCH", "f4", "yr"),
    ("FA_TARGET", "i8", ""),
    ("FA_TYPE", "u1", ""),
    ("OBJTYPE", "S3", ""),
    ("SUBPRIORITY", "f8", ""),
    ("OBSCONDITIONS", "i4", ""),
    ("RELEASE", "i2", ""),
    ("BRICKID", "i4", ""),
    ("BRICK_OBJID", "i4", ""),
    ("MORPHTYPE", "S4", ""),
    *_PHOT,
    ("MASKBITS", "i2", ""),
    ("REF_ID", "i8", ""),
    ("REF_CAT", "S2", ""),
    ("GAIA_PHOT_G_MEAN_MAG", "f4", "mag"),
    ("GAIA_PHOT_BP_MEAN_MAG", "f4", "mag"),
    ("GAIA_PHOT_RP_MEAN_MAG", "f4", "mag"),
    ("PARALLAX", "f4", "mas"),
    ("BRICKNAME", "S8", ""),
    ("EBV", "f4", "mag"),
    ("FLUX_W1", "f4", "nanomaggy"),
    ("FLUX_W2", "f4", "nanomaggy"),
    ("FLUX_IVAR_W1", "f4", "nanomaggy^-2"),
    ("FLUX_IVAR_W2", "f4", "nanomaggy^-2"),
    ("FIBERFLUX_G", "f4", "nanomaggy"),
    ("FIBERFLUX_R", "f4", "nanomaggy"),
    ("FIBERFLUX_Z", "f4", "nanomaggy"),
    ("FIBERTOTFLUX_G", "f4", "nanomaggy"),
    ("FIBERTOTFLUX_R", "f4", "nanomaggy"),
    ("FIBERTOTFLUX_Z", "f4", "nanomaggy"),
    ("SERSIC", "f4", ""),
    ("SHAPE_R", "f4", "arcsec"),
    ("SHAPE_E1", "f4", ""),
    ("SHAPE_E2", "f4", ""),
    ("PHOTSYS", "S1", ""),
    ("PRIORITY_INIT", "i8", ""),
    ("NUMOBS_INIT", "i8", ""),
    ("DESI_TARGET", "i8", ""),
    ("BGS_TARGET", "i8", ""),
    ("MWS_TARGET", "i8", ""),
    ("SCND_TARGET", "i8", ""),
    ("PLATE_RA", "f8", "deg"),
    ("PLATE_DEC", "f8", "deg"),
    ("COADD_NUMEXP", "i2", ""),
    ("COADD_EXPTIME", "f4", "s"),
    ("COADD_NUMNIGHT", "i2", ""),
    ("COADD_NUMTILE", "i2", ""),
    ("MEAN_DELTA_X", "f4", "mm"),
    ("RMS_DELTA_X", "f4", "mm"),
    ("MEAN_DELTA_Y", "f4", "mm"),
    ("RMS_DELTA_Y", "f4", "mm"),
    ("MEAN_FIBER_RA", "f8", "deg"),
    ("STD_FIBER_RA", "f4", "arcsec"),
    ("MEAN_FIBER_DEC", "f8", "deg"),
    ("STD_FIBER_DEC", "f4", "arcsec"),
    ("MEAN_PSF_TO_FIBER_SPECFLUX", "f4", ""),
    ("MIN_MJD", "f8", "d"),
    ("MAX_MJD", "f8", "d"),
    ("MEAN_MJD", "f8", "d"),
]

#: SV3 files carry the SV3 targeting masks in place of the main-survey ones.
SV3_TARGET_COLUMNS = ("SV3_DESI_TARGET", "SV3_BGS_TARGET", "SV3_MWS_TARGET", "SV3_SCND_TARGET")
MAIN_TARGET_COLUMNS = ("DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET")

EXP_FIBERMAP: list[Column] = [
    ("TARGETID", "i8", ""),
    ("PRIORITY", "i4", ""),
    ("SUBPRIORITY", "f8", ""),
    ("NIGHT", "i4", ""),
    ("EXPID", "i4", ""),
    ("MJD", "f8", ""),
    ("TILEID", "i4", ""),
    ("EXPTIME", "f8", "s"),
    ("PETAL_LOC", "i2", ""),
    ("DEVICE_LOC", "i4", ""),
    ("LOCATION", "i8", ""),
    ("FIBER", "i4", ""),
    ("FIBERSTATUS", "i4", ""),
    ("FIBERASSIGN_X", "f4", "mm"),
    ("FIBERASSIGN_Y", "f4", "mm"),
    ("LAMBDA_REF", "f4", "Angstrom"),
    ("PLATE_RA", "f8", "deg"),
    ("PLATE_DEC", "f8", "deg"),
    ("NUM_ITER", "i8", ""),
    ("FIBER_X", "f8", "mm"),
    ("FIBER_Y", "f8", "mm"),
    ("DELTA_X", "f8", "mm"),
    ("DELTA_Y", "f8", "mm"),
    ("FIBER_RA", "f8", "deg"),
    ("FIBER_DEC", "f8", "deg"),
    ("PSF_TO_FIBER_SPECFLUX", "f8", ""),
    ("IN_COADD_B", "?", ""),
    ("IN_COADD_R", "?", ""),
    ("IN_COADD_Z", "?", ""),
]

SCORES: list[Column] = [("TARGETID", "i8", "")] + [
    (f"{stat}_COADD_{kind}_{arm}", "f4", "")
    for arm in "BRZ"
    for stat, kind in (("INTEG", "FLUX"), ("MEDIAN", "FLUX"), ("MEDIAN", "SNR"))
]
SCORES += TSNR2_COLUMNS

REDSHIFTS: list[Column] = [
    ("TARGETID", "i8", ""),
    ("CHI2", "f8", ""),
    ("COEFF", "f8", ""),  # shape (10,), see SUBARRAYS
    ("Z", "f8", ""),
    ("ZERR", "f8", ""),
    ("ZWARN", "i8", ""),
    ("NPIXELS", "i8", ""),
    ("SPECTYPE", "S6", ""),
    ("SUBTYPE", "S20", ""),
    ("NCOEFF", "i8", ""),
    ("DELTACHI2", "f8", ""),
]
SUBARRAYS = {"COEFF": (10,)}

TSNR2: list[Column] = [("TARGETID", "i8", "")] + TSNR2_COLUMNS


def _zcatalog() -> list[Column]:
    fm = {name: (name, dt, unit) for name, dt, unit in FIBERMAP}
    head = [
        ("TARGETID", "i8", ""),
        ("SURVEY", "S7", ""),
        ("PROGRAM", "S6", ""),
        ("HEALPIX", "i4", ""),
        ("SPGRPVAL", "i4", ""),
    ]
    body = [c for c in REDSHIFTS if c[0] != "TARGETID"]
    order = [
        "COADD_FIBERSTATUS",
        "TARGET_RA",
        "TARGET_DEC",
        "PMRA",
        "PMDEC",
        "REF_EPOCH",
        "FA_TARGET",
        "FA_TYPE",
        "OBJTYPE",
        "SUBPRIORITY",
        "OBSCONDITIONS",
        "RELEASE",
        "BRICKNAME",
        "BRICKID",
        "BRICK_OBJID",
        "MORPHTYPE",
        "EBV",
        "FLUX_G",
        "FLUX_R",
        "FLUX_Z",
        "FLUX_W1",
        "FLUX_W2",
        "FLUX_IVAR_G",
        "FLUX_IVAR_R",
        "FLUX_IVAR_Z",
        "FLUX_IVAR_W1",
        "FLUX_IVAR_W2",
        "FIBERFLUX_G",
        "FIBERFLUX_R",
        "FIBERFLUX_Z",
        "FIBERTOTFLUX_G",
        "FIBERTOTFLUX_R",
        "FIBERTOTFLUX_Z",
        "MASKBITS",
        "SERSIC",
        "SHAPE_R",
        "SHAPE_E1",
        "SHAPE_E2",
        "REF_ID",
        "REF_CAT",
        "GAIA_PHOT_G_MEAN_MAG",
        "GAIA_PHOT_BP_MEAN_MAG",
        "GAIA_PHOT_RP_MEAN_MAG",
        "PARALLAX",
        "PHOTSYS",
        "PRIORITY_INIT",
        "NUMOBS_INIT",
    ]
    tail = [
        "DESI_TARGET",
        "BGS_TARGET",
        "MWS_TARGET",
        "SCND_TARGET",
        "PLATE_RA",
        "PLATE_DEC",
        "COADD_NUMEXP",
        "COADD_EXPTIME",
        "COADD_NUMNIGHT",
        "COADD_NUMTILE",
        "MEAN_DELTA_X",
        "RMS_DELTA_X",
        "MEAN_DELTA_Y",
        "RMS_DELTA_Y",
        "MEAN_PSF_TO_FIBER_SPECFLUX",
        "MEAN_FIBER_RA",
        "STD_FIBER_RA",
        "MEAN_FIBER_DEC",
        "STD_FIBER_DEC",
        "MIN_MJD",
        "MAX_MJD",
        "MEAN_MJD",
    ]
    cols = head + body + [fm[n] for n in order]
    cols += [(n, "i8", "") for n in SV3_TARGET_COLUMNS]  # dropped from main-survey files
    cols += [fm[n] for n in tail]
    cols += TSNR2_COLUMNS
    cols += [("ZCAT_NSPEC", "i2", ""), ("ZCAT_PRIMARY", "?", ""), ("DESINAME", "S22", "")]
    return cols


#: ZCATALOG HDU of zpix-{survey}-{program}.fits (zcatalog v1), all optional SV3 columns
#: included; :func:`zcatalog_columns` drops them for main-survey files.
ZCATALOG: list[Column] = _zcatalog()

#: Columns a reader can rely on in every DR1 zpix file.
ZCATALOG_REQUIRED = [
    "TARGETID", "SURVEY", "PROGRAM", "HEALPIX", "Z", "ZERR", "ZWARN", "SPECTYPE", "SUBTYPE",
    "DELTACHI2", "CHI2", "COEFF", "TARGET_RA", "TARGET_DEC", "FLUX_G", "FLUX_R", "FLUX_Z",
    "FLUX_W1", "FLUX_W2", "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "FLUX_IVAR_W1",
    "FLUX_IVAR_W2", "EBV", "DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "ZCAT_PRIMARY",
    "ZCAT_NSPEC",
]  # fmt: skip


def zcatalog_columns(survey: str) -> list[Column]:
    """ZCATALOG columns of ``zpix-{survey}-*.fits`` (SV3 masks only in sv3 files)."""
    if survey == "sv3":
        return list(ZCATALOG)
    return [c for c in ZCATALOG if c[0] not in SV3_TARGET_COLUMNS]


def fibermap_columns(survey: str) -> list[Column]:
    """FIBERMAP columns of a healpix coadd / redrock file of ``survey``."""
    if survey != "sv3":
        return list(FIBERMAP)
    rename = dict(zip(MAIN_TARGET_COLUMNS, SV3_TARGET_COLUMNS, strict=True))
    return [(rename.get(n, n), dt, u) for n, dt, u in FIBERMAP]


# FastSpecFit (iron VAC v2.x layout: HDU1 FASTSPEC, HDU2 METADATA). Only the subset
# the projects use is written; names, types and units as in fastspecfit's doc/fastspec.rst.
_LINES = (
    "OII_3726",
    "OII_3729",
    "HBETA",
    "OIII_5007",
    "NII_6584",
    "HALPHA",
    "SII_6716",
    "SII_6731",
)
FASTSPEC: list[Column] = [
    ("TARGETID", "i8", ""),
    ("SURVEY", "S4", ""),
    ("PROGRAM", "S6", ""),
    ("HEALPIX", "i4", ""),
    ("Z", "f8", ""),
    ("RCHI2", "f4", ""),
    ("SNR_B", "f4", ""),
    ("SNR_R", "f4", ""),
    ("SNR_Z", "f4", ""),
    ("VDISP", "f4", "km / s"),
    ("AV", "f4", "mag"),
    ("AGE", "f4", "Gyr"),
    ("ZZSUN", "f4", ""),
    ("LOGMSTAR", "f4", "Msun"),
    ("SFR", "f4", "Msun / yr"),
    ("DN4000", "f4", ""),
    ("DN4000_OBS", "f4", ""),
    ("DN4000_IVAR", "f4", ""),
    ("DN4000_MODEL", "f4", ""),
    ("FLUX_SYNTH_G", "f4", "nmgy"),
    ("FLUX_SYNTH_R", "f4", "nmgy"),
    ("FLUX_SYNTH_Z", "f4", "nmgy"),
    *[
        (f"{kind}01_SDSS_{band}", "f4", unit)
        for band in "UGRIZ"
        for kind, unit in (("ABSMAG", "mag"), ("ABSMAG_IVAR", "1 / mag2"), ("KCORR", "mag"))
    ],
    *[
        (f"{line}_{q}", "f4", unit)
        for line in _LINES
        for q, unit in (
            ("FLUX", "1e-17 erg / (cm2 s)"),
            ("FLUX_IVAR", "1e+34 cm4 s2 / erg2"),
            ("EW", "Angstrom"),
            ("EW_IVAR", "1 / Angstrom2"),
            ("SIGMA", "km / s"),
            ("VSHIFT", "km / s"),
        )
    ],
]
# The real column names are ABSMAG01_SDSS_G and ABSMAG01_IVAR_SDSS_G.
FASTSPEC = [(n.replace("ABSMAG_IVAR01_SDSS", "ABSMAG01_IVAR_SDSS"), dt, u) for n, dt, u in FASTSPEC]

METADATA: list[Column] = [
    ("TARGETID", "i8", ""),
    ("SURVEY", "S4", ""),
    ("PROGRAM", "S6", ""),
    ("HEALPIX", "i4", ""),
    ("TILEID_LIST", "S54", ""),
    ("RA", "f8", "deg"),
    ("DEC", "f8", "deg"),
    ("COADD_FIBERSTATUS", "i8", ""),
    ("DESI_TARGET", "i8", ""),
    ("BGS_TARGET", "i8", ""),
    ("MWS_TARGET", "i8", ""),
    ("SCND_TARGET", "i8", ""),
    ("Z", "f8", ""),
    ("ZWARN", "i1", ""),
    ("DELTACHI2", "f8", ""),
    ("SPECTYPE", "S6", ""),
    ("Z_RR", "f8", ""),
    ("TSNR2_BGS", "f4", ""),
    ("TSNR2_LRG", "f4", ""),
    ("TSNR2_ELG", "f4", ""),
    ("TSNR2_QSO", "f4", ""),
    ("TSNR2_LYA", "f4", ""),
    ("PHOTSYS", "S1", ""),
    ("LS_ID", "i8", ""),
    *[(f"FLUX_{b}", "f4", "nmgy") for b in ("G", "R", "Z", "W1", "W2")],
    *[(f"FLUX_IVAR_{b}", "f4", "1 / nmgy2") for b in ("G", "R", "Z", "W1", "W2")],
    ("EBV", "f4", "mag"),
    *[(f"MW_TRANSMISSION_{b}", "f4", "") for b in ("G", "R", "Z", "W1", "W2")],
]

# DESIVAST VoidFinder (VAST) catalogs: HDU MAXIMALS (one row per void, its largest
# sphere) and HOLES (every sphere, labelled by void), comoving Mpc/h with h = 1.
MAXIMALS: list[Column] = [
    ("X", "f8", "Mpc/h"),
    ("Y", "f8", "Mpc/h"),
    ("Z", "f8", "Mpc/h"),
    ("RADIUS", "f8", "Mpc/h"),
    ("R", "f8", "Mpc/h"),
    ("RA", "f8", "deg"),
    ("DEC", "f8", "deg"),
    ("VOID", "i8", ""),
    ("EDGE", "i8", ""),
    ("R_EFF", "f8", "Mpc/h"),
    ("R_EFF_UNCERT", "f8", "Mpc/h"),
]
HOLES: list[Column] = [
    ("X", "f8", "Mpc/h"),
    ("Y", "f8", "Mpc/h"),
    ("Z", "f8", "Mpc/h"),
    ("RADIUS", "f8", "Mpc/h"),
    ("VOID", "i8", ""),
]


def dtype_of(columns: list[Column]) -> np.dtype:
    """NumPy dtype of a column list (sub-array shapes from :data:`SUBARRAYS`)."""
    fields = []
    for name, dt, _ in columns:
        shape = SUBARRAYS.get(name)
        fields.append((name, dt, shape) if shape else (name, dt))
    return np.dtype(fields)


def units_of(columns: list[Column]) -> dict[str, str]:
    """TUNIT mapping (name -> unit) of a column list, empty units omitted."""
    return {name: unit for name, _, unit in columns if unit}


def wavelength(arm: str) -> np.ndarray:
    """DR1 wavelength grid of ``arm`` ('B', 'R' or 'Z'), vacuum Angstrom, float64."""
    start, stop, n = ARMS[arm.upper()]
    return np.round(start + 0.8 * np.arange(n), 1)
