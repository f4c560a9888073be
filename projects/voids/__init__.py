"""desilab.projects.voids: cosmic voids and the galaxies in them (project 3).

Find voids in a volume-limited BGS sample with a VoidFinder equivalent to VAST's
(Hoyle & Vogeley 2002) and write them in the DESIVAST format; classify galaxies as
wall, void, edge or outside (VAST's vflag); compare void and wall galaxies matched in
stellar mass and redshift. ``desilab voids find|classify|compare`` runs it in batch;
:class:`VoidExplorer` is the notebook widget.
"""

from .classify import (
    VFLAG_EDGE,
    VFLAG_OUTSIDE,
    VFLAG_VOID,
    VFLAG_WALL,
    Membership,
    classify_galaxies,
    void_of_points,
)
from .explore import SlicePlane, SliceView, VoidStudy
from .geometry import (
    MPC_H,
    BoxMask,
    GridFrame,
    HealpixMask,
    SurveyMask,
    TransformedMask,
    as_mpch,
    radec_to_xyz,
    sphere_overlap,
    xyz_to_radec,
)
from .grow import grow_holes
from .results import (
    ensure_tables,
    list_runs,
    read_desivast_voids,
    read_membership,
    read_voids,
    save_membership,
    write_membership,
    write_run,
    write_voids,
)
from .sample import (
    GALAXY_COLUMNS,
    GalaxySample,
    SampleCuts,
    build_sample,
    cap_of,
    comoving_mpch,
    derive_properties,
    load_galaxies,
)
from .stats import (
    DEFAULT_PROPERTIES,
    Comparison,
    Fraction,
    SizeFunction,
    compare_environments,
    compare_samples,
    galaxy_void_fraction,
    match_controls,
    void_size_function,
    volume_filling_fraction,
)
from .synthetic import cap_mask, clustered_catalog, plant_voids, poisson_catalog, sdss_dr7_like
from .voidfinder import ALGORITHM_VERSION, VoidCatalog, VoidFinderConfig, find_voids

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_PROPERTIES",
    "GALAXY_COLUMNS",
    "MPC_H",
    "VFLAG_EDGE",
    "VFLAG_OUTSIDE",
    "VFLAG_VOID",
    "VFLAG_WALL",
    "BoxMask",
    "Comparison",
    "Fraction",
    "GalaxySample",
    "GridFrame",
    "HealpixMask",
    "Membership",
    "SampleCuts",
    "SizeFunction",
    "SlicePlane",
    "SliceView",
    "SurveyMask",
    "TransformedMask",
    "VoidCatalog",
    "VoidFinderConfig",
    "VoidExplorer",
    "VoidStudy",
    "as_mpch",
    "build_sample",
    "cap_mask",
    "cap_of",
    "classify_galaxies",
    "clustered_catalog",
    "comoving_mpch",
    "compare_environments",
    "compare_samples",
    "derive_properties",
    "ensure_tables",
    "find_voids",
    "galaxy_void_fraction",
    "grow_holes",
    "list_runs",
    "load_galaxies",
    "match_controls",
    "plant_voids",
    "poisson_catalog",
    "radec_to_xyz",
    "read_desivast_voids",
    "read_membership",
    "read_voids",
    "save_membership",
    "sdss_dr7_like",
    "sphere_overlap",
    "void_of_points",
    "void_size_function",
    "volume_filling_fraction",
    "write_membership",
    "write_run",
    "write_voids",
    "xyz_to_radec",
]


def __getattr__(name: str):
    # The widget pulls in ipywidgets and bokeh: import it only when asked for (not by the CLI).
    if name == "VoidExplorer":
        from .widget import VoidExplorer

        return VoidExplorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
