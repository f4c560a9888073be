"""desilab.projects.outflows: AGN outflow energetics from BAL troughs and [O III] wings."""

from .bal import BAL_COLUMNS, BALResult, Trough, measure_bal, measure_bal_batch
from .batch import FitConfig, FitOutcome, fit_spectra, fit_unit, run_batch
from .continuum import ContinuumFit, RestGrid, fit_continuum, fit_continuum_batch, rebin_rest
from .energetics import (
    MODEL_VERSION,
    Assumptions,
    Energetics,
    RadiusLuminosity,
    bal_energetics,
    bolometric_luminosity,
    oiii_energetics,
)
from .flags import REVIEW_FLAGS, Flag, describe, explain
from .oiii import OIII_COLUMNS, OIIIFit, fit_oiii, fit_oiii_batch
from .panels import bal_panel, oiii_panel
from .plots import (
    bal_fraction_vs_z,
    bi_distribution,
    edot_vs_lbol,
    summary_figures,
    vmax_vs_loiii,
    write_report,
)
from .results import create_tables, decisions, read_results, record_decision, write_results
from .review import ReviewItem, ReviewSession
from .sample import (
    Unit,
    catalog_layout,
    make_units,
    rows_to_table,
    select_from_catalog,
    select_from_files,
    write_table,
)
from .spectra import QSOSpectra, combine_arms, read_qso_spectra

__all__ = [
    "BAL_COLUMNS",
    "MODEL_VERSION",
    "OIII_COLUMNS",
    "REVIEW_FLAGS",
    "Assumptions",
    "BALResult",
    "ContinuumFit",
    "Energetics",
    "FitConfig",
    "FitOutcome",
    "Flag",
    "OIIIFit",
    "OutflowExplorer",
    "QSOSpectra",
    "RadiusLuminosity",
    "RestGrid",
    "ReviewItem",
    "ReviewSession",
    "Trough",
    "Unit",
    "bal_energetics",
    "bal_fraction_vs_z",
    "bal_panel",
    "bi_distribution",
    "bolometric_luminosity",
    "catalog_layout",
    "combine_arms",
    "create_tables",
    "decisions",
    "describe",
    "edot_vs_lbol",
    "explain",
    "fit_continuum",
    "fit_continuum_batch",
    "fit_oiii",
    "fit_oiii_batch",
    "fit_spectra",
    "fit_unit",
    "make_units",
    "measure_bal",
    "measure_bal_batch",
    "oiii_energetics",
    "oiii_panel",
    "read_qso_spectra",
    "read_results",
    "rebin_rest",
    "record_decision",
    "rows_to_table",
    "run_batch",
    "select_from_catalog",
    "select_from_files",
    "summary_figures",
    "vmax_vs_loiii",
    "write_report",
    "write_results",
    "write_table",
]


def __getattr__(name: str):
    # The widget needs ipywidgets and bokeh: load it only when asked for, so batch
    # workers (Ray, processes) import the fitting code alone.
    if name == "OutflowExplorer":
        from .explorer import OutflowExplorer

        return OutflowExplorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
