"""AMUN's adversarial set D_A as a cached artifact: built once per (original model, attack config,
forget set) with `attacks.pgd`, and reused by every AMUN run of a sweep."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from attacks.pgd import auto_eps_init, fgsm_doubling, pgd_doubling
from data.loader import to_float
from data.splits import ordered_digest
from runner.cache import Cache, code_fingerprint, key_of
from runner.typed import BatchSize, ConfigError, Positive, Range, Steps, typed

log = logging.getLogger("runner")
AUTO_SAMPLES = 100  # the paper picks eps_init on about 100 forget samples
_HERE = Path(__file__).resolve()
# The code that determines an adversarial set; taken at import, like the training code's.
ATTACK_CODE = code_fingerprint([_HERE, _HERE.parent.parent / "attacks" / "pgd.py"])
# method.attack.kind -> its search with per-sample eps doubling (attacks.pgd). Adding a kind is
# adding its function here.
ATTACKS = {"pgd": pgd_doubling, "fgsm": fgsm_doubling}


@dataclass
class AttackSpec:
    """The schema of a method's `attack` node (runner.typed): how D_A is built."""

    kind: str = MISSING          # pgd | fgsm
    norm: str = MISSING          # l2 | linf
    eps_init: Any = MISSING      # a positive number or "auto"
    auto_base: Positive = MISSING
    steps: Steps = MISSING
    max_doublings: Annotated[int, Range(ge=0)] = MISSING
    batch_size: BatchSize = MISSING

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS or self.norm not in ("l2", "linf"):
            raise ValueError(f"method.attack.kind must be {' or '.join(ATTACKS)} and norm l2 or "
                             f"linf, got {self.kind!r} and {self.norm!r}")
        eps = self.eps_init
        if eps == "auto" and self.kind != "pgd":
            raise ValueError("method.attack.eps_init=auto searches with PGD; give fgsm a number")
        if eps != "auto" and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                              or eps <= 0):
            raise ValueError(f"method.attack.eps_init must be a positive number or auto, got "
                             f"{eps!r}")


def check_method(method: DictConfig) -> None:
    """A method that trains on an adversarial set: its `attack` block typed and sane, and where
    its D_A comes from with sequential requests."""
    if "attack" not in method:
        raise ConfigError(f"method {method.name} needs an `attack` block (see conf/method/amun.yaml)")
    if method.get("adversarial_from") not in ("original", "current"):
        raise ConfigError("method.adversarial_from must be original (reuse the original model's "
                          "adversarial set) or current (rebuild it per request), got "
                          f"{method.get('adversarial_from')!r}")
    typed(method, "attack", AttackSpec, "method.attack", prefix="method.attack")


def _attack(attack: DictConfig, model, x, y, eps_init: float):
    """The search `attack.kind` names, given the attack's settings it takes."""
    search = ATTACKS[attack.kind]
    taken = inspect.signature(search).parameters
    return search(model, x, y, eps_init=eps_init,
                  **{k: attack[k] for k in ("norm", "steps", "max_doublings", "batch_size")
                     if k in taken})


@dataclass
class AdversarialSet:
    """The attack's outcome for each forget sample, in forget order, on the run's device."""

    x_adv: torch.Tensor     # float (n, C, H, W) in [0, 1]
    y_adv: torch.Tensor     # the model's (wrong) prediction on x_adv
    eps: torch.Tensor       # the smallest radius that fooled the model
    success: torch.Tensor   # bool: fooled within max_doublings
    model_calls: int        # samples the model saw while building it, eps_init search included
    search_calls: int       # of which the eps_init auto search
    eps_init: float
    cache_key: str
    hit: bool

    def take(self, positions: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """D_A of the forget samples at `positions` (all by default): the fooled ones only."""
        rows = slice(None) if positions is None else positions
        ok = self.success[rows]
        return self.x_adv[rows][ok], self.y_adv[rows][ok]


def spec_of(attack: DictConfig, model_key: str, forget_idx: np.ndarray) -> dict:
    """What determines an adversarial set: the cache key's content."""
    # The forget indices in sampler order: eps_init auto looks at the first AUTO_SAMPLES of them.
    ordered = ordered_digest(forget_idx)
    return {"original": model_key, "attack": OmegaConf.to_container(attack, resolve=True),
            "forget_idx_sha256_ordered": ordered, "n_forget": int(len(forget_idx)),
            "code": ATTACK_CODE}


def build(attack: DictConfig, cache: Cache, model: torch.nn.Module, model_key: str,
          forget_x: torch.Tensor, forget_y: torch.Tensor, forget_idx: np.ndarray) -> AdversarialSet:
    """The adversarial examples of the forget samples against `model` (whose cache key, or
    `state_digest`, is `model_key`), through the cache."""
    spec = spec_of(attack, model_key, forget_idx)

    def write(directory: Path) -> None:
        # Count every sample the model sees, the eps_init search included (the papers' cost).
        calls = [0]
        handle = model.register_forward_hook(lambda m, inputs, out: calls.__setitem__(
            0, calls[0] + len(inputs[0])))
        try:
            _search(directory, calls)
        finally:
            handle.remove()

    def _search(directory: Path, calls: list) -> None:
        x = to_float(forget_x)
        eps_init = attack.eps_init
        if eps_init == "auto":
            eps_init = auto_eps_init(model, x[:AUTO_SAMPLES], forget_y[:AUTO_SAMPLES],
                                     base=attack.auto_base, norm=attack.norm,
                                     steps=attack.steps, max_doublings=attack.max_doublings,
                                     batch_size=attack.batch_size)
            log.info("eps_init auto: %g", eps_init)
        search_calls = calls[0]
        res = _attack(attack, model, x, forget_y, float(eps_init))
        torch.save({"x_adv": res.x_adv.cpu(), "y_adv": res.y_adv.cpu(), "eps": res.eps.cpu(),
                    "success": res.success.cpu(), "model_calls": torch.tensor(calls[0]),
                    "search_calls": torch.tensor(search_calls),
                    "eps_init": torch.tensor(float(eps_init), dtype=torch.float64)}, directory / "adversarial.pt")

    path, key, hit = cache.get_or_build("adversarial", spec, write)
    blob = torch.load(path / "adversarial.pt", map_location=forget_x.device, weights_only=True)
    adv = AdversarialSet(blob["x_adv"], blob["y_adv"], blob["eps"], blob["success"],
                         int(blob["model_calls"]), int(blob["search_calls"]),
                         float(blob["eps_init"]), key, hit)
    n = max(len(adv.eps), 1)
    log.info("adversarial set: %.1f model forward+backward calls per forget sample (%.1f of them "
             "choosing eps_init), %.1f%% fooled, eps_init %g", adv.model_calls / n,
             adv.search_calls / n, float(adv.success.float().mean()) * 100, adv.eps_init)
    if not adv.success.all():
        log.warning("adversarial set: %d forget samples were never fooled; D_A leaves them out",
                    int((~adv.success).sum()))
    return adv


def summarize(sets: list[AdversarialSet]) -> dict:
    """What a run reports about the adversarial sets it used (one, or one per request)."""
    eps = torch.cat([s.eps for s in sets]).cpu()
    ok = torch.cat([s.success for s in sets]).cpu()
    inits = sorted({s.eps_init for s in sets})
    return {
        "cache_key": sets[0].cache_key if len(sets) == 1 else [s.cache_key for s in sets],
        "eps_init": inits[0] if len(inits) == 1 else inits,
        "model_calls_per_sample": sum(s.model_calls for s in sets) / max(len(eps), 1),
        "eps_search_calls_per_sample": sum(s.search_calls for s in sets) / max(len(eps), 1),
        "success_rate": float(ok.float().mean()) * 100.0,
        "eps_quantiles": {q: float(eps[ok].quantile(q / 100)) if ok.any() else None
                          for q in (5, 50, 95, 100)},
        "eps_histogram": {f"{v:g}": int(c) for v, c in zip(*np.unique(eps[ok].numpy(),
                                                                        return_counts=True))},
    }


def plot_eps_histogram(summary: dict, path: Path) -> None:
    """Bar chart of how many forget samples were first fooled at each radius."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    radii = list(summary["eps_histogram"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(len(radii)), list(summary["eps_histogram"].values()), tick_label=radii)
    ax.set_xlabel("smallest eps fooling the original model")
    ax.set_ylabel("forget samples")
    ax.set_title(f"eps_init {summary['eps_init']}, "
                 f"{summary['model_calls_per_sample']:.1f} model calls per sample", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class AdversarialSets:
    """D_A as a method's preparation: a method that trains on it declares
    `unlearn.prepares = (AdversarialSets,)`, and the runner fills `UnlearnData.adversarial` for
    each request (and each U-LiRA shadow) from the model the request starts from. The method's
    `attack` block says how; `adversarial_from: original` builds it once on the original model
    for the whole forget set and gives each request its share, `current` rebuilds it for each
    request on the model that request starts from (AMUN-A)."""

    field = "adversarial"                   # the UnlearnData field it fills
    kind = "adversarial"                    # its cache kind
    keys = ("attack", "adversarial_from")   # the method node's keys it reads
    check = staticmethod(check_method)

    def __init__(self, method: DictConfig, cache: Cache):
        self.attack, self.cache = method.attack, cache
        self.once = method.adversarial_from == "original"

    def key(self, model_key: str, forget_idx: np.ndarray) -> str:
        return key_of(spec_of(self.attack, model_key, forget_idx))

    def has(self, key: str) -> bool:
        return self.cache.has("adversarial", key)

    def build(self, model: torch.nn.Module, model_key: str, forget_x: torch.Tensor,
              forget_y: torch.Tensor, forget_idx: np.ndarray) -> AdversarialSet:
        return build(self.attack, self.cache, model, model_key, forget_x, forget_y, forget_idx)

    @staticmethod
    def report(sets: list[AdversarialSet], model: torch.nn.Module, last: tuple, batch_size: int,
               run_dir: Path) -> dict:
        """What the run reports: `summarize`, and how far the unlearned model took on the last
        request's D_A (`last`): the % of it that it labels with the original's wrong label (the
        original: 100 by construction); the histogram of radii as a plot."""
        from runner.evaluate import predict

        summary = summarize(sets)
        adv_x, adv_y = last
        hits = predict(model, adv_x, batch_size).argmax(1) == adv_y
        summary["unlearned_adv_label_pct"] = float(hits.float().mean() * 100.0)
        plot_eps_histogram(summary, run_dir / "adversarial_eps.png")
        return summary
