"""The pictures of a run and of a sweep (PNG; the W&B logger uploads a run's as images).

A run (`figures=true`), from its per-sample outputs (runner.samples):
- `roc.png`: the membership ROC of D_F (positives) against the test set (negatives) for the
  unlearned model, the oracle and the original, on linear and log-log axes, each model's AUC in
  the legend. The score is RMIA's when the run has eval=rmia, else the true-label confidence
  (MIA-efficacy's feature). All samples, not the metrics' balanced subsamples, so the AUCs can
  differ a little from `rmia_ft_auc`.
- `confidence.png`: per model, histograms of the true-label confidence on D_F, D_R and the test
  set: unlearning should move D_F's from D_R's towards the test set's, as the oracle's is.

A sweep (`python -m runner.report DIR`):
- `avg_gap.png`: Avg. Gap of each table row (mean with sample-std error bars over seeds);
- `requests.png`, when its runs made k sequential requests: each metric of the gap over the
  requests, a line per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

ROLES = ("original", "unlearned", "retrain")  # the order of the pictures: before, after, target
COLORS = {"original": "tab:red", "unlearned": "tab:blue", "retrain": "tab:green",
          "forget": "tab:red", "retain": "tab:gray", "test": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def run_figures(columns: dict[str, np.ndarray], run_dir: Path) -> list[Path]:
    """roc.png and confidence.png of a run from its per-sample columns (runner.samples)."""
    return [roc_figure(columns, Path(run_dir) / "roc.png"),
            confidence_figure(columns, Path(run_dir) / "confidence.png")]


def roc_figure(columns: dict[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    split = columns["split"]
    rmia = all(f"{r}.rmia_score" in columns for r in ROLES)
    score = "rmia_score" if rmia else "confidence"
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    pos, neg = split == "forget", split == "test"
    labels = np.r_[np.ones(pos.sum()), np.zeros(neg.sum())]
    for role in ROLES:
        s = columns[f"{role}.{score}"]
        values = np.r_[s[pos], s[neg]]
        f, t, _ = roc_curve(labels, values)
        auc = roc_auc_score(labels, values) * 100
        for ax in axes:
            ax.plot(f, t, color=COLORS[role], label=f"{role}: AUC {auc:.1f}")
    low = 1 / max(neg.sum(), 1)
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot([low, 1], [low, 1], "k:", lw=0.8)
        ax.set(xscale=scale, yscale=scale, xlabel="false positive rate (test set)",
               ylabel="true positive rate (forget set)")
        if scale == "log":
            ax.set(xlim=(low, 1), ylim=(low, 1.05))
        ax.legend(fontsize=8, loc="lower right")
    what = "RMIA score" if rmia else "true-label confidence"
    fig.suptitle(f"Membership of D_F vs the test set, by {what} ({pos.sum()} forget, "
                 f"{neg.sum()} test samples)", fontsize=10)
    return _save(fig, path)


def confidence_figure(columns: dict[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    split = columns["split"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    bins = np.linspace(0, 1, 26)
    for ax, role in zip(axes, ROLES):
        conf = columns[f"{role}.confidence"]
        for name in ("retain", "test", "forget"):
            part = conf[split == name]
            ax.hist(part, bins=bins, weights=np.full(len(part), 1 / max(len(part), 1)),
                    histtype="step", lw=1.6, color=COLORS[name],
                    label=f"{name} (mean {part.mean():.2f})")
        ax.set(yscale="log", ylim=(1e-3, 1.2), title=f"{role} model",
               xlabel="confidence in the true label")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("fraction of the split's samples")
    return _save(fig, path)


def avg_gap_figure(rows: list[tuple[str, list[float]]], path: Path, title: str) -> Path:
    """Bars of the mean Avg. Gap per row with sample-std error bars; `rows`: (label, values)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(rows) + 2), 3.6))
    means = [np.mean(v) if v else np.nan for _, v in rows]
    stds = [np.std(v, ddof=1) if len(v) > 1 else np.nan for _, v in rows]  # none for one run
    ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), [f"{label} (n={len(v)})" for label, v in rows],
                  rotation=35, ha="right", fontsize=8)
    ax.set(ylabel="Avg. Gap to the oracle (lower is better)", title=title)
    return _save(fig, path)


def requests_figure(series: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """series: metric -> row label -> [(request, mean value)]; a panel per metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.4), squeeze=False)
    for ax, (metric, lines) in zip(axes[0], series.items()):
        for label, points in lines.items():
            k, v = zip(*sorted(points))
            ax.plot(k, v, marker="o", label=label)
        ax.set(xlabel="request", title=metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)
