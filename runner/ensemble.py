"""`stage=ensemble`: `ensemble.members` models of the run's architecture trained jointly on the
training set (with LOTOS when `ensemble.lotos_weight` > 0; models/ensemble.py), cached like any
model trained from scratch, then evaluated:

- clean test accuracy of each member and of the ensemble (mean of the members' logits);
- robust accuracy under white-box PGD (`ensemble.attack`, LOTOS's L_inf 0.04, 50 steps) of each
  member and of the ensemble, on `attack.n` test images drawn with a fixed seed;
- the transferability rate of every ordered pair (source s, target t), as the thesis defines it:
  among those images that s and t both classify correctly and whose PGD example on s fools s,
  the fraction whose example also fools t;
- with clipped members: every member's layer-wise spectral norms, and how much each member's
  layers stretch the other members' top directions (`alignment`, what LOTOS lowers).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from attacks.pgd import pgd
from data.loader import to_float
from models.ensemble import Ensemble, Mean, ensemble_loss, lotos_penalty, stretches
from models.spectral import spectral_norms
from runner.cache import Cache
from runner.plan import Plan
from runner.table import Table
from runner.train import on_logits
from runner.evaluate import predict
from runner.typed import ConfigError
from runner.trained import RunState, Trainer, eval_batch_size, load_dataset, resolve_device

log = logging.getLogger("runner")

ATTACK_SEED = 0  # draws the attacked test images


def check(cfg: DictConfig) -> None:
    """`ensemble` and the model it trains: the members, LOTOS and the attack sane."""
    e = cfg.ensemble
    a = e.attack
    if isinstance(e.members, bool) or not isinstance(e.members, int) or e.members < 2:
        raise ConfigError(f"ensemble.members must be an integer >= 2, got {e.members!r}")
    numbers = {"lotos_weight": e.lotos_weight, "lotos_mal": e.lotos_mal, "attack.eps": a.eps,
               "attack.step_ratio": a.step_ratio}
    integers = {"attack.steps": a.steps, "attack.n": a.n}
    for name, value in [*numbers.items(), *integers.items()]:
        kind, what = ((int, float), "a number") if name in numbers else (int, "an integer")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"ensemble.{name} must be {what}, got {value!r}")
    if not (e.lotos_weight >= 0 and e.lotos_mal >= 0):
        raise ConfigError(f"ensemble.lotos_weight and lotos_mal must be >= 0, got "
                          f"{e.lotos_weight} and {e.lotos_mal}")
    if e.lotos_weight and cfg.model.get("clip") is None:
        raise ConfigError("ensemble.lotos_weight > 0: LOTOS works on the singular vectors FastClip "
                          "keeps, so it needs clipped members (model.clip=1.0, say)")
    if a.norm not in ("l2", "linf") or not a.eps > 0 or not a.step_ratio > 0 or a.steps < 1 \
            or a.n < 1:
        raise ConfigError(f"ensemble.attack needs norm l2 or linf, eps > 0, step_ratio > 0, "
                          f"steps >= 1 and n >= 1, got {dict(a)}")


def transfer_rate(correct_s: torch.Tensor, correct_t: torch.Tensor, fooled_s: torch.Tensor,
                  fooled_t: torch.Tensor) -> float:
    """The transferability rate from s to t (boolean tensors over the attacked images; `fooled_*`
    on s's adversarial examples); NaN when no image qualifies."""
    eligible = correct_s & correct_t & fooled_s
    if not bool(eligible.any()):
        return float("nan")
    return float(fooled_t[eligible].float().mean())


def member_seeds(cfg: DictConfig) -> list[int]:
    """Member i is initialized from seed 1000 x seed + i."""
    return [1000 * cfg.seed + i for i in range(cfg.ensemble.members)]


def evaluate(ensemble: Ensemble, x_u8: torch.Tensor, y: torch.Tensor, attack: DictConfig,
             batch_size: int) -> dict:
    """Accuracies, robust accuracies and transferability rates (module doc), in percent."""
    members = list(ensemble.members)
    whole = Mean(ensemble).eval()
    logits = [predict(m, x_u8, batch_size) for m in members]
    metrics = {"member_acc": [_acc(out, y) for out in logits],
               "ensemble_acc": _acc(torch.stack(logits).mean(0), y)}  # what `whole` predicts
    if attack.n > len(y):
        log.warning("ensemble.attack.n=%d: the test set has %d images; attacking all of them",
                    attack.n, len(y))
    gen = torch.Generator().manual_seed(ATTACK_SEED)
    pick = torch.randperm(len(y), generator=gen)[:attack.n].to(y.device)
    x, y = to_float(x_u8[pick]), y[pick]
    clean = [out[pick].argmax(1) == y for out in logits]
    options = dict(norm=attack.norm, eps=attack.eps, steps=attack.steps,
                   step_ratio=attack.step_ratio, batch_size=batch_size)

    def right(model, images):
        return predict(model, images, batch_size).argmax(1) == y

    adversarial = [pgd(m, x, y, **options) for m in members]
    # fooled[s][t]: member t misclassifies member s's adversarial example
    fooled = [[~right(t, adv) for t in members] for adv in adversarial]
    metrics["member_robust_acc"] = [100 * float((~fooled[i][i]).float().mean())
                                    for i in range(len(members))]
    metrics["ensemble_robust_acc"] = 100 * float(right(whole, pgd(whole, x, y, **options))
                                                 .float().mean())
    transfer = {f"{s}->{t}": 100 * transfer_rate(clean[s], clean[t], fooled[s][s], fooled[s][t])
                for s, t in itertools.permutations(range(len(members)), 2)}
    metrics["transfer_rate"] = transfer
    metrics["transfer_rate_mean"] = float(np.nanmean(list(transfer.values())))
    metrics["n_attacked"] = int(len(y))
    return metrics


def alignment(ensemble: Ensemble, mal: float, iterations: int = 100) -> dict:
    """How much each member's layers stretch the other members' top directions, what LOTOS
    pushes down: the mean over ordered pairs (m, m') and layers of ||A_m v_m'|| (v_m' the unit
    top right singular vector of m''s layer, `iterations` PowerQR steps from a seeded start), and
    LOTOS's penalty at `mal`. Needs clipped members; their PowerQR state is left as it was."""
    members = list(ensemble.members)
    states = [m.fastclip.states for m in members]
    saved = [{name: s.x for name, s in st.items()} for st in states]
    gen = torch.Generator().manual_seed(ATTACK_SEED)
    for st in states:
        for s in st.values():
            s.x = None
            s.run(iterations, gen)
    with torch.no_grad():
        stretch = [float(stretches(states[i][name].layer, states[j][name].x).sum())
                   for i, j in itertools.permutations(range(len(members)), 2)
                   for name in states[i]]
        penalty = float(lotos_penalty(members, mal))
    for st, xs in zip(states, saved):
        for name, s in st.items():
            s.x = xs[name]
    return {"cross_stretch_mean": float(np.mean(stretch)), "lotos_penalty": penalty}


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100 * float((logits.argmax(1) == y).float().mean())


def run_ensemble(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (or load) the ensemble and evaluate it (module doc)."""
    state = RunState()
    device = resolve_device(cfg.device)
    trainer = Trainer.of(cfg, Cache(cfg.paths.cache_dir), device)
    e = cfg.ensemble
    with state.stage("data"):
        ds = load_dataset(cfg).to(device)
    spec = {"ensemble": {"members": e.members, "member_seeds": member_seeds(cfg),
                         "lotos_weight": e.lotos_weight,
                         "lotos_mal": e.lotos_mal if e.lotos_weight else None}}
    train_idx = np.arange(len(ds.train_y))
    plan = Plan()
    key = trainer.key(ds, train_idx, extra_spec=spec)
    plan.cached("ensemble", "ensemble", key, trainer.cache.has("ensemble", key))
    plan.own("evaluate")
    plan.log()
    with state.stage("ensemble"):
        ensemble = Ensemble([trainer.new_model(seed) for seed in member_seeds(cfg)])  # untrained
        loss = ensemble_loss(ensemble, label_smoothing=cfg.train.label_smoothing,
                             lotos_weight=e.lotos_weight, mal=e.lotos_mal)
        ensemble = trainer.train_or_load("ensemble", ds, train_idx, state, model=ensemble,
                                         extra_spec=spec, loss=on_logits(loss))
    with state.stage("evaluate"):
        metrics = evaluate(ensemble, ds.test_x, ds.test_y, e.attack, eval_batch_size(cfg, device))
        if cfg.model.get("clip") is not None:
            example = to_float(ds.test_x[:1])
            metrics["spectral_norms"] = [spectral_norms(m, example) for m in ensemble.members]
            metrics.update(alignment(ensemble, e.lotos_mal))
    return {"stage": "ensemble", "dataset": cfg.dataset.name, "seed": cfg.seed,
            "ensemble": metrics, "plan": plan.record(), "cache_keys": state.cache_keys, "cache_hits": state.cache_hits,
            "stage_seconds": state.stage_seconds, "device": str(device)}


def _table_row(cfg: dict) -> tuple[str, str, str]:
    e = cfg.get("ensemble", {})
    kind = f"LOTOS {e.get('lotos_weight')}" if e.get("lotos_weight") else "independent"
    return cfg.get("dataset", {}).get("name", "?"), f"{e.get('members')} members", kind


def _table_value(r: dict, column: str) -> float:
    value = r["ensemble"][column]  # a list (one value per member) enters as its mean
    return float(np.mean(value)) if isinstance(value, list) else value


TABLE = Table(_table_row, _table_value, ("member_acc", "ensemble_acc", "member_robust_acc",
                                         "ensemble_robust_acc", "transfer_rate_mean"),
              headers=("ensemble", "training"), regime=False)
