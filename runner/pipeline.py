"""The stages of one run: data -> split -> original -> retrain oracle -> method -> evaluators.

The original and the oracle come from the content-addressed cache, so a sweep of unlearning runs
trains them once. Every evaluator runs on the unlearned model, the oracle and the original, in the
same run, and Avg. Gap compares the first two.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data.loader import Augment, to_float
from data.splits import Split, make_split
from methods.common import UnlearnData, method_keys
from models.spectral import spectral_norms
from runner.cache import Cache, key_of, state_digest
from runner.evaluate import EvalContext, avg_gap
from runner.figures import run_figures
from runner import saved
from runner.plan import make_plan
from runner.reference import References
from runner.reuse import evaluate_models, evaluation_base, unlearn_cached, unlearned_spec
from runner.samples import Samples
from runner.shadows import Shadows
from runner.train import check_finite
from runner.trained import (RunState, Trainer, eval_batch_size, load_dataset, native_precision,
                            resolve_device)
from runner.typed import ConfigError, import_target, partial_of

log = logging.getLogger("runner")


def request_chunks(forget_idx: np.ndarray, requests: int) -> list[np.ndarray]:
    """The forget set as `requests` consecutive unlearning requests (sizes differ by at most one),
    in the sampler's order: request k forgets chunk k."""
    if not 1 <= requests <= len(forget_idx):
        raise ConfigError(f"requests={requests}: the forget set has {len(forget_idx)} samples; "
                          "each request needs at least one")
    return np.array_split(np.asarray(forget_idx), requests)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run every stage and return the result that metrics.json and the logger record.

    With `requests=k > 1` the forget set arrives as k consecutive requests. Request j unlearns
    chunk j from the model that request j-1 left, with D_R = the training set minus chunks 1..j
    (samples forgotten earlier are gone for good). After each request the evaluators run on that
    model, on the oracle retrained without chunks 1..j, and on the original, with the forget set =
    chunks 1..j. What the method prepares (`unlearn.prepares`; AMUN's D_A) is built per request
    from the model the request starts from, or once on the original for the whole forget set
    (runner.adversarial.AdversarialSets). The top-level metrics are those after the last
    request."""
    state = RunState()
    device = resolve_device(cfg.device)
    if cfg.train.precision == "bf16" and native_precision(device) == "fp32":
        log.warning("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): "
                    "emulated, about 13x slower than fp32 on an AVX2 CPU we measured; "
                    "train.precision=fp32 trains another model (another cache key)")
    cache = Cache(cfg.paths.cache_dir)
    trainer = Trainer.of(cfg, cache, device)
    batch_size = eval_batch_size(cfg, device)
    with state.stage("data"):
        ds = load_dataset(cfg)
        split = make_split(cfg.forget, ds.train_y.numpy(), ds.num_classes)
        chunks = request_chunks(split.forget_idx, cfg.requests)
        np.save(run_dir / "forget_idx.npy", split.forget_idx)
        ds = ds.to(device)
    target = import_target(cfg.method._target_, "method")
    unlearn = partial_of(cfg.method, "method", 2, method_keys(target))
    evaluators = {name: partial_of(node, f"eval.evaluators.{name}", 2)
                  for name, node in cfg.eval.evaluators.items()}
    given_unlearned = cfg.unlearned.checkpoint  # a model to evaluate instead of the method's
    preparations = ([] if given_unlearned is not None else
                    [p(cfg.method, cache) for p in getattr(target, "prepares", ())])
    # Built on first use: a run whose evaluators need no reference model trains none.
    refs = References(trainer, cfg.reference, ds, batch_size)

    def prepare(data: UnlearnData, model, key, forget_x, forget_y, forget_idx) -> None:
        for p in preparations:
            setattr(data, p.field, p.build(model, key, forget_x, forget_y, forget_idx).take())

    def unlearn_shadow(model, key, forget_idx, retain_idx, oracle):
        """The method under test on a shadow model (indices into train + test)."""
        data = _unlearn_data(cfg, ds.num_classes, *ds.population, forget_idx, retain_idx, oracle)
        prepare(data, model, key, data.forget_x, data.forget_y, forget_idx)
        torch.manual_seed(cfg.seed)
        return unlearn(copy.deepcopy(model), data).eval()

    shadows = Shadows(trainer, ds, refs, split.forget_idx, unlearn_shadow,
                      class_id=split.class_id, batch_size=batch_size)
    given = cfg.original.checkpoint  # a user's original instead of a trained one

    def unlearned_key(start_key: str, chunk: np.ndarray, retain_idx: np.ndarray, k: int,
                      prepared: dict) -> str:
        """The cache key of request k's unlearned model (runner.reuse)."""
        return key_of(unlearned_spec(cfg, start_key=start_key, chunk=chunk, device=device,
                                     oracle_key=trainer.key(ds, retain_idx), prepared=prepared,
                                     retain_idx=retain_idx, seed=cfg.seed + k - 1))

    plan = make_plan(trainer, ds, split, chunks, refs, shadows, preparations,
                     list(evaluators.values()), given, given_unlearned,
                     unlearned_key if cfg.cache.unlearned else None)
    plan.log()
    with state.stage("original"):
        if given is None:
            original = trainer.train_or_load("original", ds, np.arange(len(ds.train_y)), state)
        else:
            original = trainer.new_model(cfg.seed)
            original.load_state_dict(saved.read_state(given, original, "original.checkpoint"))
            original.eval()
            state.cache_keys["original"] = saved.given_key(given)
            state.cache_hits["original"] = True  # loaded, not trained
    built = {p.field: [] for p in preparations}
    whole = {}  # the preparations made once, on the original, for the whole forget set
    for p in (p for p in preparations if p.once):
        with state.stage(p.field):
            idx = torch.as_tensor(split.forget_idx, device=device)
            whole[p.field] = p.build(original, state.cache_keys["original"], ds.train_x[idx],
                                     ds.train_y[idx], split.forget_idx)
            built[p.field].append(whole[p.field])
    model, reports, start = original, [], 0
    start_key = state.cache_keys["original"]  # the key of the model the next request starts from
    for k, chunk in enumerate(chunks, 1):
        tag = "" if len(chunks) == 1 else f"/{k}"
        forgotten = split.forget_idx[:start + len(chunk)]
        sub = Split(split.kind, forgotten, np.setdiff1d(np.arange(len(ds.train_y)), forgotten),
                    split.class_id)
        with state.stage("retrain" + tag):
            oracle = trainer.train_or_load("retrain", ds, sub.retain_idx, state)
        data = _unlearn_data(cfg, ds.num_classes, ds.train_x, ds.train_y, chunk, sub.retain_idx,
                             oracle, seed=cfg.seed + k - 1)
        for p in preparations:
            if p.once:
                setattr(data, p.field, whole[p.field].take(slice(start, start + len(chunk))))
                continue
            with state.stage(p.field + tag):
                key = state.cache_keys["original"] if k == 1 else state_digest(model)
                built[p.field].append(p.build(model, key, data.forget_x, data.forget_y, chunk))
                setattr(data, p.field, built[p.field][-1].take())
        with state.stage("unlearn" + tag):
            if given_unlearned is None:
                def compute(start=model, data=data, seed=cfg.seed + k - 1) -> torch.nn.Module:
                    torch.manual_seed(seed)
                    out = unlearn(copy.deepcopy(start), data).eval()
                    check_finite(out, f"method {cfg.method.name}")
                    return out

                if cfg.cache.unlearned:
                    prepared = {p.field: (whole[p.field] if p.once else built[p.field][-1]).cache_key
                                for p in preparations}
                    spec = unlearned_spec(cfg, start_key=start_key, chunk=chunk, device=device,
                                          oracle_key=state.cache_keys["retrain"], prepared=prepared,
                                          retain_idx=sub.retain_idx, seed=cfg.seed + k - 1)
                    model, start_key, hit = unlearn_cached(cache, spec, copy.deepcopy(model),
                                                           compute)
                    state.cache_keys["unlearned"], state.cache_hits["unlearned"] = start_key, hit
                else:
                    model = compute()
            else:
                model = copy.deepcopy(original)
                model.load_state_dict(saved.read_state(given_unlearned, model,
                                                       "unlearned.checkpoint"))
                model.eval()
                state.cache_keys["unlearned"] = saved.given_key(given_unlearned)
        with state.stage("evaluate" + tag):
            ctx = EvalContext(
                ds.train_x, ds.train_y, ds.test_x, ds.test_y, sub, ds.num_classes,
                batch_size=batch_size, refs=refs, shadow_models=shadows,
                oracle=oracle, population_x=ds.population[0],
                model_keys={original: state.cache_keys["original"],
                            oracle: state.cache_keys["retrain"]},
                samples=(Samples(sub, ds.train_y, ds.test_y)  # of the final models
                         if (cfg.save_samples or cfg.figures) and k == len(chunks) else None))
            reuse = (evaluation_base(cfg, ds, sub, list(evaluators.values()), refs, device=device,
                                     batch_size=batch_size, samples=ctx.samples is not None)
                     if cfg.cache.evaluations else None)
            metrics = evaluate_models(ctx, list(evaluators.values()),
                                {"unlearned": model, "retrain": oracle, "original": original},
                                       cache if reuse else None, reuse, state)
        if cfg.save_samples and k == len(chunks):
            samples_file = ctx.samples.save(run_dir)
        if cfg.figures and k == len(chunks):
            run_figures(ctx.samples.columns, run_dir)
        reports.append({"request": k, "n_request": int(len(chunk)), "n_forget": int(len(forgotten)),
                        "n_retain": int(len(sub.retain_idx)), "forget_idx_sha256": sub.digest("forget"),
                        "retrain_key": state.cache_keys["retrain"], "metrics": metrics,
                        "avg_gap": avg_gap(metrics["unlearned"], metrics["retrain"],
                                           cfg.eval.gap_metrics)})
        if len(chunks) > 1:
            log.info("request %d/%d: %d samples forgotten so far, avg_gap %.2f", k, len(chunks),
                     len(forgotten), reports[-1]["avg_gap"])
        start += len(chunk)

    extra = {}
    for p in preparations:
        extra[p.field] = p.report(built[p.field], model, getattr(data, p.field), batch_size,
                                  run_dir)
        state.cache_keys[p.field] = extra[p.field]["cache_key"]
        state.cache_hits[p.field] = all(s.hit for s in built[p.field])
    if len(chunks) > 1:
        extra["requests"] = reports
    # Reported when an evaluator uses them, even if every evaluation came from the cache.
    uses = [(use, e) for e in evaluators.values() for use in getattr(e.func, "uses", ())]
    for use, e in uses:
        if use == "shadows":
            shadows.stats["num_shadows"] = max(shadows.stats["num_shadows"],
                                               e.keywords["num_shadows"])
    if refs.used or uses:
        extra["reference"] = refs.stats
    if shadows.used or any(use == "shadows" for use, _ in uses):
        extra["shadows"] = shadows.stats
    if cfg.model.get("clip") is not None:  # FastClip: that every model is at its target
        example = to_float(ds.test_x[:1])
        extra["spectral_norms"] = {role: spectral_norms(m, example) for role, m in
                                   (("unlearned", model), ("retrain", oracle), ("original", original))}
    if cfg.save_samples:
        extra["samples"] = str(samples_file)
    if given_unlearned is not None:
        extra["unlearned_checkpoint"] = str(Path(given_unlearned).expanduser().resolve())
    if cfg.save_unlearned:  # the original and the oracle are in the cache already
        extra["models"] = {
            "unlearned": (extra["unlearned_checkpoint"] if given_unlearned is not None else
                          str(saved.save(run_dir, model, cfg))),
            "original": (str(Path(given).expanduser().resolve()) if given is not None else
                         str(cache.path("original", state.cache_keys["original"]) / "model.pt")),
            "retrain": str(cache.path("retrain", state.cache_keys["retrain"]) / "model.pt")}
    last = reports[-1]
    return {
        "method": cfg.method.name, "use_retain": cfg.method.use_retain, "dataset": cfg.dataset.name,
        "seed": cfg.seed, "forget": OmegaConf.to_container(cfg.forget),
        "n_forget": last["n_forget"], "n_retain": last["n_retain"],
        "forget_idx_sha256": last["forget_idx_sha256"],
        "metrics": last["metrics"], "avg_gap": last["avg_gap"],
        "gap_metrics": list(cfg.eval.gap_metrics), "plan": plan.record(),
        "cache_keys": state.cache_keys, "cache_hits": state.cache_hits,
        "stage_seconds": state.stage_seconds, "device": str(device), **extra,
    }


def _unlearn_data(cfg: DictConfig, num_classes: int, x: torch.Tensor, y: torch.Tensor,
                  forget_idx: np.ndarray, retain_idx: np.ndarray,
                  oracle: torch.nn.Module, seed: int | None = None) -> UnlearnData:
    """What the method is given for one request: its forget set, and D_R when it may see it
    (indices into x, y)."""
    use_retain = cfg.method.use_retain
    f = torch.as_tensor(forget_idx, device=x.device)
    r = torch.as_tensor(retain_idx, device=x.device)
    return UnlearnData(
        forget_x=x[f], forget_y=y[f],
        retain_x=x[r] if use_retain else None,
        retain_y=y[r] if use_retain else None,
        num_classes=num_classes, augment=Augment(**cfg.dataset.augment),
        seed=cfg.seed if seed is None else seed,
        precision=cfg.train.precision, channels_last=cfg.train.channels_last,
        # Only a method with D_R may have the model trained on D_R (retrain returns it).
        train_from_scratch=(lambda: copy.deepcopy(oracle)) if use_retain else None,
        forget_idx=np.asarray(forget_idx), retain_idx=np.asarray(retain_idx) if use_retain else None)
