"""The plan: what a run will train, build or load, printed before any training and recorded in
metrics.json, and true to what the run then did."""

from __future__ import annotations

import json
import logging

import pytest

from runner.__main__ import execute

from conftest import FAST

QUICK = (*FAST, "train.epochs=2", "reference.num_models=2")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _actions(result: dict) -> dict[str, str]:
    return {item["name"]: item["action"] for item in result["plan"]}


def test_the_plan_names_what_is_trained_then_loaded(make_cfg, tmp_path, cache, caplog):
    with caplog.at_level(logging.INFO, logger="runner"):
        first = execute(make_cfg(*QUICK, "method=ft", cache_dir=cache), tmp_path / "a")
    planned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert planned == ["plan: will train: original, retrain; will load: dataset digits; "
                       "will run: unlearn, evaluate"]
    # printed before the first training stage started
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(planned[0]) < messages.index("stage original ...")
    assert _actions(first) == {"dataset digits": "load", "original": "train", "retrain": "train",
                               "unlearn": "run", "evaluate": "run"}
    keys = {i["name"]: i["key"] for i in first["plan"]}
    assert keys["original"] == first["cache_keys"]["original"]
    assert keys["retrain"] == first["cache_keys"]["retrain"]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["plan"] == first["plan"]
    second = execute(make_cfg(*QUICK, "method=rl", cache_dir=cache), tmp_path / "b")
    assert _actions(second)["original"] == "load" and _actions(second)["retrain"] == "load"
    # Another method of the same seed: only its own model is unlearned and evaluated anew.
    assert second["cache_hits"] == {"original": True, "retrain": True, "unlearned": False,
                                    "evaluation.unlearned": False, "evaluation.retrain": True,
                                    "evaluation.original": True}
    # An identical job: the plan says it loads the unlearned model, and it does.
    third = execute(make_cfg(*QUICK, "method=rl", cache_dir=cache), tmp_path / "c")
    assert _actions(third)["unlearn"] == "load" and third["cache_hits"]["unlearned"]
    assert {i["name"]: i["key"] for i in third["plan"]}["unlearn"] == third["cache_keys"]["unlearned"]
    assert third["metrics"] == second["metrics"]


def test_the_plan_lists_the_adversarial_set_and_the_attack_models(make_cfg, tmp_path, cache):
    overrides = (*QUICK, "method=amun", "method.epochs=1", "eval=ulira",
                 "+eval.evaluators.rmia={_target_: attacks.rmia.rmia, _partial_: true, gamma: 2.0, "
                 "temperature: 2.0, margin: 0.6, terms: 4}")
    first = execute(make_cfg(*overrides, cache_dir=cache), tmp_path / "a")
    actions = _actions(first)
    assert actions["adversarial"] == "build"
    assert {n: a for n, a in actions.items() if n.startswith("reference")} == {
        "reference 1/2": "train", "reference 2/2": "train"}
    assert [n for n in actions if n.startswith("shadow retrain")] == [
        "shadow retrain 1/2", "shadow retrain 2/2"]
    adv = next(i for i in first["plan"] if i["name"] == "adversarial")
    assert adv["key"] == first["cache_keys"]["adversarial"]
    second = execute(make_cfg(*overrides, cache_dir=cache), tmp_path / "b")
    again = _actions(second)
    assert again["adversarial"] == "load" and again["shadow retrain 1/2"] == "load"
    # RMIA reads the reference models' cached outputs; the shadows need the models themselves
    assert again["reference 1/2"] == "load"
    assert second["metrics"] == first["metrics"]


def test_a_reference_stage_plans_its_models(make_cfg, tmp_path):
    result = execute(make_cfg(*QUICK, "stage=reference", "reference.index=1"), tmp_path / "r")
    assert [(i["name"], i["action"]) for i in result["plan"]] == [("reference 2/2", "train")]
    assert result["plan"][0]["key"] == result["reference"]["keys"][1]
