"""Descriptions of catalog columns (desidatamodel, FastSpecFit, DESIVAST), for COMMENT ON COLUMN.

:func:`describe` gives the text for an upper-case DR1 column name: an exact
entry of :data:`DOCS`, else the first matching pattern of :data:`PATTERNS`.
"""

from __future__ import annotations

import re

__all__ = ["DOCS", "PATTERNS", "describe"]

DOCS: dict[str, str] = {
    "TARGETID": "Unique DESI target ID (encodes release, brick and object number)",
    "SURVEY": "Survey name (main, sv1, sv2, sv3, cmx, special)",
    "PROGRAM": "Program name (dark, bright, backup, other)",
    "HEALPIX": "HEALPix pixel of the coadd (nside 64, nested)",
    "SPGRPVAL": "Value of the spectral grouping (the HEALPix pixel here)",
    "CHI2": "Best-fit chi2 of the redrock fit",
    "COEFF": "Redrock template coefficients (10 values)",
    "Z": "Redshift",
    "ZERR": "Redshift uncertainty",
    "ZWARN": "Redshift warning bitmask; 0 means no known problem",
    "NPIXELS": "Number of unmasked pixels contributing to the fit",
    "SPECTYPE": "Spectral type of the best fit: GALAXY, QSO or STAR",
    "SUBTYPE": "Spectral subtype (e.g. the stellar type)",
    "NCOEFF": "Number of template coefficients used",
    "DELTACHI2": "chi2 difference between the best and the second-best fit",
    "COADD_FIBERSTATUS": "Bitwise AND of the fiber status of the coadded exposures",
    "TARGET_RA": "Target right ascension (ICRS)",
    "TARGET_DEC": "Target declination (ICRS)",
    "PMRA": "Proper motion in RA times cos(dec)",
    "PMDEC": "Proper motion in Dec",
    "REF_EPOCH": "Reference epoch of the Gaia position",
    "FA_TARGET": "Targeting bit used by fiber assignment",
    "FA_TYPE": "Fiber assignment target type",
    "OBJTYPE": "Object type: TGT, SKY, NON or BAD",
    "SUBPRIORITY": "Random subpriority in [0, 1) used to break ties",
    "OBSCONDITIONS": "Allowed observing conditions (bitmask)",
    "RELEASE": "Legacy Surveys release number",
    "BRICKNAME": "Legacy Surveys brick name",
    "BRICKID": "Legacy Surveys brick ID",
    "BRICK_OBJID": "Object number within the brick",
    "MORPHTYPE": "Legacy Surveys morphological model (PSF, REX, EXP, DEV, SER)",
    "EBV": "Galactic reddening E(B-V) from SFD98",
    "MASKBITS": "Legacy Surveys mask bits",
    "SERSIC": "Sersic index",
    "SHAPE_R": "Half-light radius",
    "SHAPE_E1": "Ellipticity component 1",
    "SHAPE_E2": "Ellipticity component 2",
    "REF_ID": "Reference catalog source ID (e.g. Gaia source_id)",
    "REF_CAT": "Reference catalog (G2 for Gaia DR2, L3 for SGA, ...)",
    "GAIA_PHOT_G_MEAN_MAG": "Gaia G-band mean magnitude",
    "GAIA_PHOT_BP_MEAN_MAG": "Gaia BP mean magnitude",
    "GAIA_PHOT_RP_MEAN_MAG": "Gaia RP mean magnitude",
    "PARALLAX": "Gaia parallax",
    "PHOTSYS": "Photometric system: N (north, BASS/MzLS) or S (south, DECaLS)",
    "PRIORITY_INIT": "Initial target priority",
    "NUMOBS_INIT": "Initial number of requested observations",
    "PLATE_RA": "RA used for the fiber placement",
    "PLATE_DEC": "Dec used for the fiber placement",
    "COADD_NUMEXP": "Number of exposures in the coadd",
    "COADD_EXPTIME": "Total exposure time of the coadd",
    "COADD_NUMNIGHT": "Number of nights in the coadd",
    "COADD_NUMTILE": "Number of tiles in the coadd",
    "MEAN_PSF_TO_FIBER_SPECFLUX": "Mean fraction of a point source's light in the fiber",
    "MIN_MJD": "Earliest MJD of the coadded exposures",
    "MAX_MJD": "Latest MJD of the coadded exposures",
    "MEAN_MJD": "Mean MJD of the coadded exposures",
    "ZCAT_NSPEC": "Number of spectra of this TARGETID across all zpix files",
    "ZCAT_PRIMARY": "True for the best spectrum of this TARGETID (one row per TARGETID)",
    "DESINAME": "DESI object name (DESI JHHMMSS.ss+DDMMSS.s)",
    "TILEID_LIST": "Tiles that observed the target",
    "RA": "Right ascension (ICRS)",
    "DEC": "Declination (ICRS)",
    "Z_RR": "Redrock redshift (before any FastSpecFit refinement)",
    "LS_ID": "Legacy Surveys unique object ID",
    "RCHI2": "Reduced chi2 of the full FastSpecFit fit",
    "VDISP": "Stellar velocity dispersion",
    "AV": "Attenuation of the stellar continuum in V",
    "AGE": "Light-weighted stellar age",
    "ZZSUN": "Stellar metallicity relative to solar",
    "LOGMSTAR": "log10 of the stellar mass",
    "SFR": "Instantaneous star formation rate",
    "DN4000": "Narrow 4000-A break of the emission-line-subtracted spectrum",
    "DN4000_OBS": "Narrow 4000-A break of the observed spectrum",
    "DN4000_IVAR": "Inverse variance of DN4000",
    "DN4000_MODEL": "Narrow 4000-A break of the best-fit continuum model",
    "X": "Comoving Cartesian x (h = 1)",
    "Y": "Comoving Cartesian y (h = 1)",
    "RADIUS": "Sphere radius",
    "R": "Comoving distance of the sphere centre",
    "VOID": "Void number the sphere belongs to",
    "EDGE": "1 if the void touches the survey edge",
    "R_EFF": "Effective radius of the void (volume-equivalent sphere)",
    "R_EFF_UNCERT": "Uncertainty of R_EFF",
}

PATTERNS: list[tuple[str, str]] = [
    (r"^FLUX_IVAR_(\w+)$", "Inverse variance of FLUX_{0}"),
    (r"^FLUX_SYNTH_(\w+)$", "{0}-band flux synthesised from the spectrum"),
    (
        r"^FLUX_(G|R|Z|W1|W2)$",
        "Legacy Surveys {0}-band flux (not corrected for Galactic extinction)",
    ),
    (r"^FIBERFLUX_(\w+)$", "Predicted {0}-band flux within a 1.5 arcsec fiber"),
    (r"^FIBERTOTFLUX_(\w+)$", "Predicted {0}-band flux within a fiber, all sources included"),
    (r"^MW_TRANSMISSION_(\w+)$", "Galactic transmission in the {0} band"),
    (r"^TSNR2_(\w+?)_([BRZ])$", "Template S/N^2 for {0} targets in the {1} arm"),
    (r"^TSNR2_(\w+)$", "Template S/N^2 for {0} targets, all arms"),
    (r"^(SV\d|CMX)?_?(DESI|BGS|MWS|SCND)_TARGET$", "{0} {1} targeting bitmask"),
    (r"^CMX_TARGET$", "Commissioning targeting bitmask"),
    (r"^(MEAN|RMS)_DELTA_([XY])$", "{0} of the fiber positioning offset in {1}"),
    (r"^(MEAN|STD)_FIBER_(RA|DEC)$", "{0} of the fiber {1} over exposures"),
    (r"^SNR_([BRZ])$", "Median S/N per pixel in the {0} arm"),
    (r"^ABSMAG01_IVAR_SDSS_(\w)$", "Inverse variance of ABSMAG01_SDSS_{0}"),
    (r"^ABSMAG01_SDSS_(\w)$", "Absolute magnitude in the SDSS {0} band shifted to z = 0.1 (h = 1)"),
    (r"^KCORR01_SDSS_(\w)$", "K-correction to the SDSS {0} band shifted to z = 0.1"),
    (r"^(\w+)_FLUX_IVAR$", "Inverse variance of the {0} line flux"),
    (r"^(\w+)_FLUX$", "{0} emission-line flux"),
    (r"^(\w+)_EW_IVAR$", "Inverse variance of the {0} equivalent width"),
    (r"^(\w+)_EW$", "{0} rest-frame equivalent width"),
    (r"^(\w+)_SIGMA$", "{0} line width (Gaussian sigma)"),
    (r"^(\w+)_VSHIFT$", "{0} velocity shift relative to the redshift"),
]


def describe(name: str) -> str:
    """Description of an (upper-case) DR1 column, or a pointer to the data model."""
    name = name.upper()
    if name in DOCS:
        return DOCS[name]
    for pattern, text in PATTERNS:
        m = re.match(pattern, name)
        if m:
            return text.format(*[(g or "") for g in m.groups()]).strip()
    return f"{name}: see the DESI data model (desidatamodel) for this column"
