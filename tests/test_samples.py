"""samples.npz: the per-sample outputs of a run's three models, from which its metrics recompute."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.lira import distinguish
from attacks.mia_nn import mia_nn_score
from attacks.rmia import balanced_metrics
from runner.__main__ import execute
from runner.samples import load

from conftest import FAST

ROLES = ("unlearned", "retrain", "original")
RMIA = ("+eval.evaluators.rmia={_target_: attacks.rmia.rmia, _partial_: true, gamma: 2.0, "
        "temperature: 2.0, margin: 0.6, terms: 4}")


def test_the_per_sample_file_gives_back_the_runs_metrics(make_cfg, tmp_path):
    result = execute(make_cfg(*FAST, "train.epochs=2", "reference.num_models=2", "method=ft",
                              "eval=ulira", RMIA, "figures=true"), tmp_path / "a")
    for png in ("roc.png", "confidence.png"):  # runner/figures.py, from the same columns
        assert (tmp_path / "a" / png).stat().st_size > 20_000, png
    assert result["samples"] == str(tmp_path / "a" / "samples.npz")
    frame = load(tmp_path / "a")
    assert len(frame) == 1437 + 360  # digits: every training sample, then every test sample
    assert frame.split.value_counts().to_dict() == {"retain": 1293, "test": 360, "forget": 144}
    forget_idx = np.load(tmp_path / "a" / "forget_idx.npy")
    assert sorted(frame.index[frame.split == "forget"]) == sorted(forget_idx)
    assert frame["index"].tolist() == list(range(1437)) + list(range(360))
    assert frame.label.dtype == np.int64 and frame["unlearned.prediction"].dtype == np.int64
    rows = {s: frame[frame.split == s] for s in ("forget", "retain", "test")}
    for role in ROLES:
        m = result["metrics"][role]
        for s, part in rows.items():
            correct = (part[f"{role}.prediction"] == part.label).mean() * 100
            assert correct == pytest.approx(m[f"{s}_acc"], abs=1e-4), (role, s)
        assert rows["forget"][f"{role}.confidence"].mean() * 100 == pytest.approx(
            m["forget_confidence"], abs=1e-3)
        assert (rows["forget"][f"{role}.loss"] >= 0).all()
        called = rows["forget"][f"{role}.mia_efficacy_member"]
        assert (called == 0).mean() * 100 == m["mia_efficacy"]
        assert rows["retain"][f"{role}.mia_efficacy_member"].isna().all()  # scores D_F only
        again = balanced_metrics({s: part[f"{role}.rmia_score"].to_numpy()
                                  for s, part in rows.items()})
        assert again == {k: m[k] for k in again}
        # U-LiRA: this model's likelihood ratios against the oracle's, on the scored D_F rows
        llr = rows["forget"][[f"{role}.ulira_llr", "retrain.ulira_llr"]].dropna().to_numpy()
        assert len(llr) > 0 and rows["test"][f"{role}.ulira_llr"].isna().all()
        assert distinguish(llr[:, 0], llr[:, 1]) == {k: m[k] for k in ("ulira_auc", "ulira_acc")}


def test_the_mia_nn_features_are_kept(make_cfg, tmp_path):
    result = execute(make_cfg(*FAST, "eval=class_unlearning", "forget=class", "forget.class_id=1",
                              "method=rl", "method.epochs=1", "figures=true", "save_samples=false"),
                     tmp_path / "b")
    assert "samples" not in result and not (tmp_path / "b" / "samples.npz").exists()
    assert (tmp_path / "b" / "roc.png").exists()  # figures without the file
    result = execute(make_cfg(*FAST, "eval=class_unlearning", "forget=class", "forget.class_id=1",
                              "method=rl", "method.epochs=1"), tmp_path / "a")
    frame = load(tmp_path / "a" / "samples.npz")
    assert (frame.label[frame.split == "forget"] == 1).all()
    nn = {c.split(".")[1] for c in frame.columns if ".mia_nn_p" in c}
    assert len(nn) == 3  # the three neighbour classes of the forgotten one
    node = make_cfg("eval=class_unlearning").eval.evaluators.mia_nn
    for role in ROLES:
        cols = [c.replace("unlearned.", f"{role}.") for c in frame.columns
                if c.startswith("unlearned.mia_nn_p")]
        members = frame.loc[frame.split == "forget", cols].to_numpy()
        nonmembers = frame.loc[(frame.split == "test") & (frame.label == 1), cols].to_numpy()
        assert not np.isnan(members).any() and not np.isnan(nonmembers).any()
        assert frame.loc[frame.split == "retain", cols].isna().all().all()
        assert mia_nn_score(members, nonmembers, C=node.C, folds=node.folds,
                            seed=node.seed) == result["metrics"][role]["mia_nn"]
