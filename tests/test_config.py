"""Every option of every config group composes and validates; bad configs fail before any data."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from models.build import build_model
from runner.config import ConfigError, validate

CONF = Path(__file__).resolve().parent.parent / "conf"
REPO = CONF.parent


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "train", "forget", "method", "eval",
                                   "logger", "paths", "experiment"])
def test_every_option_composes_and_validates(make_cfg, group, tmp_path):
    assert _options(group), f"conf/{group} is empty"
    indices = tmp_path / "forget.txt"
    indices.write_text("0\n5\n9\n")
    for option in _options(group):
        class_forget = (group, option) in {("forget", "class"), ("method", "trw"),
                                           ("method", "unsir"), ("eval", "class_unlearning"),
                                           ("eval", "class_ulira")}
        extra = ["forget=class", "forget.class_id=1"] if class_forget else []
        if (group, option) in {("model", "airbench"), ("train", "fast")}:
            extra = ["dataset=cifar10", "model=airbench"]  # airbench takes 16x16 and up
        if (group, option) == ("forget", "indices"):
            extra = [f"forget.path={indices}"]  # the one option that needs the user's file
        cfg = make_cfg(f"{group}={option}", *extra)
        validate(cfg)


@pytest.mark.parametrize("dataset", _options("dataset"))
def test_default_model_and_recipe_of_every_dataset_build(make_cfg, dataset):
    cfg = make_cfg(f"dataset={dataset}")
    validate(cfg)
    model = build_model(cfg.model, cfg.dataset)
    assert model.num_classes == cfg.dataset.num_classes


def test_a_dataset_picks_its_model_and_recipe_and_the_command_line_replaces_them(make_cfg):
    cfg = make_cfg("dataset=fashion_mnist_paperlike")
    assert cfg.model.width == 16 and cfg.train.epochs == 20 and cfg.train.precision == "bf16"
    plain = make_cfg("dataset=cifar10", "model=resnet18", "train=tiny")
    assert not plain.model.halve_downsample and plain.train.epochs == 15


def test_paper_defaults_for_cifar10(make_cfg):
    cfg = make_cfg("dataset=cifar10")
    assert cfg.model._target_ == "models.resnet.ResNet18" and cfg.model.halve_downsample
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (200, 128, 0.1)
    assert cfg.train.schedule.step_size == 40 and cfg.train.weight_decay == 5e-4
    assert make_cfg("dataset=cifar10", "model=vgg19_bn").model._target_ == "models.vgg.VGG19BN"


@pytest.mark.parametrize("overrides,message", [
    (["forget.fraction=1.5"], r"forget.fraction must lie in \(0, 1\), got 1.5"),
    (["forget=class", "forget.class_id=42"], r"class_id must lie in \[0, 9\].*got 42"),
    (["method.lr=abc"], "method.lr must be float"),
    (["train.epochs=ten"], "could not be converted to Integer"),
    (["method.epochs=2.5"], "method.epochs must be int"),
    (["dataset.mean=[0.1,0.2]"], "one per channel"),
    (["train.precision=fp8"], "fp32 or bf16"),
    (["forget.fraction=null"], "exactly one of forget.fraction and forget.count"),
    (["method=ft", "method.use_retain=false"], "ft needs the retain set"),
    (["method=retrain", "method.use_retain=false"], "retrain needs the retain set"),
    (["method.decay_every=0"], r"method.decay_every must be >= 1, got 0"),
    (["method.batch_size=0"], r"method.batch_size must be >= 1"),
    (["method.lr=-1"], r"method.lr must be > 0"),
    (["train.lr=0"], r"train.lr must be > 0"),
    (["train.momentum=1.5"], r"train.momentum must be >= 0.0 and <= 1.0"),
    (["train=paper", "train.schedule.step_size=null"], "needs step_size"),
    (["train.schedule.name=linear"], "step, cosine, constant or triangle"),
    (["train=fast", "train.schedule.warmup=1.5"], "triangle schedule needs 0 < warmup < 1"),
    (["train.schedule.name=triangle"], "triangle schedule needs"),
    (["train=fast", "train.label_smoothing=1.0"], r"label_smoothing must be in \[0, 1\)"),
    (["train.bias_lr_scale=0"], "bias_lr_scale must be > 0"),
    (["train=fast", "train.lookahead.decay_base=1.5"], "train.lookahead needs"),
    (["train=fast", "train.lookahead.every_n_steps=0"], "train.lookahead needs"),
    (["dataset.augment.pad_mode=mirror"], "pad_mode must be zeros or reflect"),
    (["dataset.augment.pad_mode=reflect", "dataset.augment.crop_pad=8"], "reflect padding needs"),
    (["dataset=cifar10", "model=airbench", "model.whiten_bias_epochs=-1"],
     "whiten_bias_epochs must be null or an int >= 0"),
    (["checkpoint.every_s=-5"], "checkpoint.every_s must be null or"),
    (["model=airbench"], "at least 16x16"),  # the default dataset is 8x8 digits
    (["dataset=cifar10", "model=airbench", "model.tta=3"], "tta must be 0, 1 or 2"),
    (["model.width=0"], "width must be a positive int"),
    (["eval.gap_metrics=[test_forget_acc]"], "no evaluator reports for forget=random"),
    (["eval.evaluators.mia_efficacy.num_members=-3"], "num_members must be >= 1"),
    (["eval_batch_size=0"], "eval_batch_size must be null or >= 1"),
    (["logger.mode=ofline"], "logger.mode must be one of"),
    (["device=gpu"], "device must be auto, cpu"),
])

def test_bad_values_fail_validation(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_unknown_method_and_misspelled_keys_fail_at_compose(make_cfg):
    with pytest.raises(MissingConfigException, match="Could not find 'method/amunn'"):
        make_cfg("method=amunn")
    with pytest.raises(ConfigCompositionException, match="lrr"):
        make_cfg("method.lrr=0.1")


def test_a_method_yaml_with_a_typo_fails_signature_check(make_cfg):
    cfg = make_cfg("method=ga")
    cfg.method._set_flag("struct", False)
    cfg.method.epoch = cfg.method.pop("epochs")
    with pytest.raises(ConfigError, match=r"unknown keys \['epoch'\], missing keys \['epochs'\]"):
        validate(cfg)


def test_cli_cfg_job_prints_the_composed_config():
    out = subprocess.run([sys.executable, "-m", "runner", "--cfg", "job", "method=rl",
                          "forget.fraction=0.5"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "_target_: methods.rl.unlearn" in out and "fraction: 0.5" in out


def test_cli_rejects_bad_config_before_loading_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "forget.fraction=1.5", "logger=none",
                           f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "forget.fraction must lie in (0, 1), got 1.5" in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing was loaded, decoded or trained


def test_tuned_values_apply_to_their_dataset_only(make_cfg):
    assert make_cfg("method=ga").method.lr == 0.01            # conf/method_dataset/ga_digits.yaml
    assert make_cfg("method=ga", "dataset=synthetic").method.lr == 1e-4   # conf/method/ga.yaml
    assert make_cfg("method=ga", "method.lr=0.5").method.lr == 0.5        # the command line wins


def test_validation_types_the_recipe(make_cfg):
    cfg = make_cfg("train.lr=1")
    validate(cfg)
    assert isinstance(cfg.train.lr, float)
    class_cfg = make_cfg("forget=class", "forget.class_id=3", "eval.gap_metrics=[test_forget_acc]")
    validate(class_cfg)  # the class-only accuracies exist for class forgetting


def test_every_method_dataset_file_names_a_real_pair():
    methods, datasets = set(_options("method")), set(_options("dataset"))
    for name in _options("method_dataset"):
        assert any(name == f"{m}_{d}" for m in methods for d in datasets), name


def test_amun_table1_describes_the_papers_grid(make_cfg):
    cfg = make_cfg("experiment=amun_table1", "seed=10")
    assert cfg.dataset.name == "cifar10" and cfg.model.halve_downsample
    assert cfg.forget.seed == 10 and cfg.train.epochs == 200
    validate(cfg)
    out = subprocess.run([sys.executable, "-m", "runner", "experiment=amun_table1",
                          "--cfg", "hydra"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "method: retrain,ft,rl,ga,bs,l1_sparse,salun,amun,amun_salun" in out
    assert "forget.fraction: 0.1,0.5" in out and "seed: 1,10,100" in out


def test_class_ulira_has_both_attack_sets_and_the_class_gap(make_cfg):
    """eval=class_ulira (experiment=trw_table's evaluators): U-LiRA added to the class evaluators,
    with the class Avg. Gap (a defaults order that let eval=ulira's list win would drop MIA-NN)."""
    cfg = make_cfg("eval=class_ulira", "forget=class", "forget.class_id=1")
    validate(cfg)
    assert {"accuracy", "mia_efficacy", "mia_nn", "ulira"} <= set(cfg.eval.evaluators)
    assert list(cfg.eval.gap_metrics) == list(make_cfg("eval=class_unlearning").eval.gap_metrics)
    assert "mia_nn" in cfg.eval.gap_metrics
    trw = make_cfg("experiment=trw_table")
    assert trw.forget.kind == "class" and "ulira" in trw.eval.evaluators
    assert trw.dataset.subset.test is None
