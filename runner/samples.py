"""Per-sample outputs of a run's evaluated models: `samples.npz` in the run dir.

One row per training sample and per test sample (the training set first, in its order, then the
test set), for the three evaluated models (roles `unlearned`, `retrain`, `original`). Arrays in
the file, each of length N = n_train + n_test:

- `split` (str): forget, retain or test (the run's split; after the last request for requests=k)
- `index` (int64): the sample's index in the training set (forget, retain) or the test set
- `label` (int64): its true label
- `<role>.prediction` (int64): the model's predicted class
- `<role>.confidence` (float32): softmax probability of the true label
- `<role>.loss` (float32): cross-entropy of the true label
- and each per-sample score an evaluator computed, NaN on the rows it does not score:
  `<role>.rmia_score` (float64; every row: the RMIA score, eval=rmia),
  `<role>.ulira_llr` (float64; forget rows some shadow forgot: U-LiRA's log-likelihood ratio
  unlearned vs retrained, eval=ulira), `<role>.mia_efficacy_member` (float32; forget rows: 1 if
  MIA-efficacy's SVC calls the sample a member, else 0), `<role>.mia_nn_p<c>` (float64; forget
  rows and test rows of the forgotten class: the probability of neighbour class c, MIA-NN's
  features, eval=class_unlearning).

`load(path)` gives the file as a pandas DataFrame, one line per sample. From its columns the
run's metrics recompute: e.g. forget_acc = mean(prediction == label) on the forget rows, and the
RMIA AUCs are `attacks.rmia.balanced_metrics` of the rmia_score per split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FILE = "samples.npz"
SPLITS = ("forget", "retain", "test")


class Samples:
    """The per-sample columns of one evaluation, filled role by role (`EvalContext.keep`)."""

    def __init__(self, split, train_y: torch.Tensor, test_y: torch.Tensor):
        self.n_train, n_test = len(train_y), len(test_y)
        self.rows = {"forget": np.asarray(split.forget_idx), "retain": np.asarray(split.retain_idx),
                     "test": self.n_train + np.arange(n_test)}
        kind = np.full(self.n_train + n_test, "", dtype="<U6")
        for name, rows in self.rows.items():
            kind[rows] = name
        self.columns = {"split": kind,
                        "index": np.r_[np.arange(self.n_train), np.arange(n_test)].astype(np.int64),
                        "label": torch.cat([train_y, test_y]).cpu().numpy().astype(np.int64)}

    def keep(self, role: str, name: str, where: str | np.ndarray, values, dtype=np.float64) -> None:
        """Column `<role>.<name>` gets `values` on the rows of `where`: a split name,
        "population" (every row), or row numbers (train index, or n_train + test index)."""
        rows = (np.arange(len(self.columns["label"])) if isinstance(where, str)
                and where == "population" else self.rows[where] if isinstance(where, str) else where)
        values = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values)
        if values.shape != (len(rows),):
            raise ValueError(f"{role}.{name}: {values.shape} values for {len(rows)} rows")
        key = f"{role}.{name}"
        if key not in self.columns:
            fill = -1 if np.issubdtype(dtype, np.integer) else np.nan
            self.columns[key] = np.full(len(self.columns["label"]), fill, dtype=dtype)
        self.columns[key][rows] = values

    def keep_outputs(self, role: str, logits: dict[str, torch.Tensor]) -> None:
        """prediction, confidence and loss of a model from its logits on each split."""
        for name, z in logits.items():
            y = torch.as_tensor(self.columns["label"][self.rows[name]], device=z.device)
            z = z.float()
            self.keep(role, "prediction", name, z.argmax(1), np.int64)
            self.keep(role, "confidence", name, torch.softmax(z, 1).gather(1, y[:, None])[:, 0],
                      np.float32)
            self.keep(role, "loss", name, torch.nn.functional.cross_entropy(z, y, reduction="none"),
                      np.float32)

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / FILE
        tmp = path.with_name(FILE + ".tmp.npz")
        np.savez_compressed(tmp, **self.columns)
        tmp.replace(path)
        return path


def load(path: str | Path):
    """A run's samples.npz (or the run dir holding one) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / FILE
    with np.load(path, allow_pickle=False) as f:
        return pd.DataFrame({k: f[k] for k in f.files})
