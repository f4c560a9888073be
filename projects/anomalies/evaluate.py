"""Evaluation against the mock's truth: ROC AUC and precision at k, per class, per detector.

Targets of the evaluation (rows of the table):

* ``all``: any injected anomaly (truth ANOMALY != NONE) against the quasars
  with none;
* each anomaly class (DOUBLE_Z, EXTREME_RED, WEAK_LINE, ARM_JUMP, STAR_QSO)
  against the quasars with none;
* ``BAL``: broad absorption-line quasars without an injected anomaly against
  the other quasars without one. BALs are part of the normal population of
  the mock (about 15 % of z > 1.6 quasars), so a detector flags them only as
  far as they are rare in its eyes; for the injected anomalies they are
  negatives like any other quasar.

Precision at k uses k = the number of positives (R-precision): the fraction
of true positives among the k highest scores.

Each AUC comes with its standard error (DeLong's, from the placement values of
the positives among the negatives and back), so a reader sees how much of a
difference between classes, detectors or runs the sample size alone explains:
with ~50 positives an AUC of 0.9 is uncertain by ~0.02-0.03.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table
from sklearn.metrics import roc_curve

__all__ = [
    "ANOMALY_CLASSES",
    "DEFAULT_DETECTORS",
    "Evaluation",
    "auc_with_error",
    "evaluate",
    "precision_at_k",
]

ANOMALY_CLASSES = ("DOUBLE_Z", "EXTREME_RED", "WEAK_LINE", "ARM_JUMP", "STAR_QSO")
#: Detector label -> score column of :func:`~desilab.projects.anomalies.score_store`'s table.
DEFAULT_DETECTORS = {
    "VAE": "SCORE",
    "VAE reconstruction": "SCORE_RECON",
    "VAE chi2/bin": "CHI2",
    "VAE latent density": "SCORE_DENSITY",
    "PCA": "SCORE_PCA",
    "PCA chi2/bin": "SCORE_PCA_CHI2",
    "IsolationForest": "SCORE_IFOREST",
}


def precision_at_k(y: np.ndarray, score: np.ndarray, k: int) -> float:
    """Fraction of positives among the ``k`` highest scores (ties broken by order)."""
    if k <= 0:
        return float("nan")
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    return float(np.mean(np.asarray(y, dtype=bool)[top]))


def auc_with_error(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC AUC and its DeLong standard error.

    Parameters
    ----------
    y : ndarray of bool
        True for positives.
    score : ndarray
        Larger = more likely positive; ties count one half.

    Returns
    -------
    auc, error : float
        The AUC (equal to sklearn's ``roc_auc_score``) and its standard error.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    # Placement of each positive among the negatives (fraction below it), and back.
    v10 = (np.searchsorted(neg, pos, "left") + np.searchsorted(neg, pos, "right")) / (2.0 * n)
    v01 = 1 - (np.searchsorted(pos, neg, "left") + np.searchsorted(pos, neg, "right")) / (2.0 * m)
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return auc, float(np.sqrt(var))


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    table : Table
        One row per (target, detector): TARGET, DETECTOR, N_POS, N_NEG, AUC, AUC_ERR
        (DeLong standard error), P_AT_K, K.
    curves : dict
        ``(target, detector) -> (fpr, tpr)``.
    """

    table: Table
    curves: dict = field(default_factory=dict)

    def auc(self, target: str, detector: str) -> float:
        """AUC of one detector for one target."""
        t = self.table
        row = t[(t["TARGET"] == target) & (t["DETECTOR"] == detector)]
        if not len(row):
            raise KeyError(f"no evaluation of {detector!r} for {target!r}")
        return float(row["AUC"][0])

    def markdown(self, errors: bool = False) -> str:
        """A Markdown table: one row per target, AUC and P@k per detector.

        With ``errors``, each AUC is followed by its standard error (``0.903±0.012``).
        """
        detectors = list(dict.fromkeys(self.table["DETECTOR"]))
        targets = list(dict.fromkeys(self.table["TARGET"]))
        head = "| target | n | " + " | ".join(f"{d} AUC / P@k" for d in detectors) + " |"
        lines = [head, "|" + "---|" * (len(detectors) + 2)]
        for target in targets:
            rows = self.table[self.table["TARGET"] == target]
            n = int(rows["N_POS"][0])
            cells = []
            for d in detectors:
                r = rows[rows["DETECTOR"] == d]
                if not len(r):
                    cells.append("-")
                    continue
                err = f"±{r['AUC_ERR'][0]:.3f}" if errors else ""
                cells.append(f"{r['AUC'][0]:.3f}{err} / {r['P_AT_K'][0]:.2f}")
            lines.append(f"| {target} | {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None):
        """Bokeh grid of ROC curves, one panel per target; saved as HTML when ``path``."""
        from bokeh.embed import file_html
        from bokeh.layouts import gridplot
        from bokeh.palettes import Category10
        from bokeh.plotting import figure
        from bokeh.resources import INLINE

        targets = list(dict.fromkeys(self.table["TARGET"]))
        detectors = list(dict.fromkeys(self.table["DETECTOR"]))
        colors = dict(zip(detectors, Category10[10], strict=False))
        panels = []
        for target in targets:
            fig = figure(
                title=f"ROC: {target}",
                x_axis_label="false positive rate",
                y_axis_label="true positive rate",
                width=340,
                height=320,
            )
            fig.line([0, 1], [0, 1], color="gray", line_dash="dashed")
            for d in detectors:
                if (target, d) in self.curves:
                    fpr, tpr = self.curves[(target, d)]
                    label = f"{d} {self.auc(target, d):.3f}"
                    fig.line(fpr, tpr, color=colors[d], legend_label=label, line_width=2)
            fig.legend.location = "bottom_right"
            fig.legend.label_text_font_size = "8pt"
            panels.append(fig)
        grid = gridplot(panels, ncols=4)
        if path is not None:
            Path(path).write_text(file_html(grid, INLINE, "Anomalous quasars: ROC curves"))
        return grid


def _labels(scores: Table, truth: Table) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(truth["TARGETID"])
    tids = np.asarray(truth["TARGETID"])[order]
    pos = np.searchsorted(tids, scores["TARGETID"])
    pos = np.clip(pos, 0, len(tids) - 1)
    found = tids[pos] == np.asarray(scores["TARGETID"])
    if not found.all():
        raise KeyError(
            f"{int((~found).sum())} scored TARGETIDs are not in the truth table "
            f"(e.g. {np.asarray(scores['TARGETID'])[~found][:3].tolist()}): wrong mock?"
        )
    rows = order[pos]
    anomaly = np.char.strip(np.asarray(truth["ANOMALY"])[rows].astype(str))
    return anomaly, np.asarray(truth["BAL"])[rows].astype(bool)


def evaluate(
    scores: Table,
    truth: Table,
    *,
    detectors: dict[str, str] | None = None,
) -> Evaluation:
    """ROC AUC and precision at k of each detector for each target (see module docstring).

    Parameters
    ----------
    scores : Table
        TARGETID and score columns (larger = more anomalous).
    truth : Table
        The mock's QSO truth (:func:`desilab.desi.read_truth` ``(outdir, "qso")``).
    detectors : dict, optional
        Label -> column; default :data:`DEFAULT_DETECTORS` (those present).

    Returns
    -------
    Evaluation
    """
    detectors = detectors or {k: v for k, v in DEFAULT_DETECTORS.items() if v in scores.colnames}
    anomaly, bal = _labels(scores, truth)
    normal = anomaly == "NONE"
    targets = {"all": (anomaly != "NONE", np.ones(len(anomaly), dtype=bool))}
    for cls in ANOMALY_CLASSES:
        targets[cls] = (anomaly == cls, (anomaly == cls) | normal)
    targets["BAL"] = (bal & normal, normal)
    rows, curves = [], {}
    for target, (positive, use) in targets.items():
        y = positive[use]
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        for label, column in detectors.items():
            s = np.asarray(scores[column], dtype=np.float64)[use]
            # A failed fit is as suspicious as it gets (the largest finite value: sklearn's
            # roc_curve refuses inf).
            s = np.where(np.isfinite(s), s, np.finfo(np.float64).max)
            auc, err = auc_with_error(y, s)
            fpr, tpr, _ = roc_curve(y, s)
            curves[(target, label)] = (fpr, tpr)
            p_at_k = precision_at_k(y, s, n_pos)
            rows.append((target, label, n_pos, n_neg, auc, err, p_at_k, n_pos))
    table = Table(
        rows=rows or None,
        names=("TARGET", "DETECTOR", "N_POS", "N_NEG", "AUC", "AUC_ERR", "P_AT_K", "K"),
        dtype=("U16", "U32", "i8", "i8", "f8", "f8", "f8", "i8"),
    )
    return Evaluation(table=table, curves=curves)
