"""desilab.projects.anomalies: anomalous quasar detection with a VAE (project 1)."""

from .baselines import PCABaseline, fit_baselines
from .build import build_feature_store
from .detector import AnomalyModel, ConditionalLatentDensity, LatentDensity
from .evaluate import ANOMALY_CLASSES, Evaluation, evaluate, precision_at_k
from .model import VAE, VAEConfig, masked_terms, select_device, set_threads
from .prepare import (
    ObservedSpectra,
    PreparedSpectra,
    RestGrid,
    combine_arms,
    normalise,
    prepare_spectra,
    rebin_rest,
)
from .results import create_results_table, read_results, write_results
from .score import (
    Explanation,
    explain,
    load_detector,
    project_latents,
    score_shard,
    score_store,
)
from .select import catalog_data_root, select_qsos, select_qsos_from_catalog, select_qsos_from_files
from .store import FeatureStore, write_feature_store
from .train import TrainConfig, plot_history, train

#: The explorer widget and its model import ipywidgets and bokeh: loaded on first use, so the
#: batch pipeline (CLI, Ray workers) does not pay for them.
_LAZY = {"AnomalyExplorer": ".explorer_view", "AnomalyExplorerModel": ".explorer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ANOMALY_CLASSES",
    "VAE",
    "AnomalyExplorer",
    "AnomalyExplorerModel",
    "AnomalyModel",
    "Evaluation",
    "Explanation",
    "FeatureStore",
    "ConditionalLatentDensity",
    "LatentDensity",
    "ObservedSpectra",
    "PCABaseline",
    "PreparedSpectra",
    "RestGrid",
    "TrainConfig",
    "VAEConfig",
    "build_feature_store",
    "catalog_data_root",
    "combine_arms",
    "create_results_table",
    "evaluate",
    "explain",
    "fit_baselines",
    "load_detector",
    "masked_terms",
    "normalise",
    "plot_history",
    "precision_at_k",
    "prepare_spectra",
    "project_latents",
    "read_results",
    "rebin_rest",
    "score_shard",
    "score_store",
    "select_device",
    "select_qsos",
    "select_qsos_from_catalog",
    "select_qsos_from_files",
    "set_threads",
    "train",
    "write_feature_store",
    "write_results",
]
