"""Resumable training (runner.checkpoint) and the cache's build lock: a job that dies or is stopped
ends, once rerun, with the model an uninterrupted run makes; jobs sharing a cache build once."""

import logging
import multiprocessing
import os
import signal
import time

import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from data.loader import Augment, Batches
from runner.cache import Cache
from runner.checkpoint import Preempted, TrainCheckpoint
from runner.config import ConfigError, validate
from models.fastclip import ClipSpec, attach
from runner.hooks import FreezeAfter, Lookahead, Schedule
from runner.optim import sgd
from runner.recipe import make_scheduler
from runner.train import fit

EPOCHS = 3
_digits = load_digits()
X = torch.as_tensor(_digits.images * 255 / 16, dtype=torch.uint8)[:, None]
Y = torch.as_tensor(_digits.target)


SCHEDULES = {"triangle": dict(name="triangle", warmup=0.2, start=0.2, end=0.1),  # per step
             "step": dict(name="step", step_size=1, gamma=0.5),                   # per epoch
             "cosine": dict(name="cosine")}


LOOKAHEAD = dict(start_epochs=1, decay_base=0.95, decay_pow=3.0, every_n_steps=5)


def _setup(schedule="triangle"):
    """A fresh model, batch stream, optimizer and schedule, all seeded: every call makes the same
    training run. Dropout draws from the global RNG, augmentation from the stream's. Schedule
    `lookahead`: the triangle with airbench's EMA and a parameter trained for 2 epochs only;
    `clip`: the triangle with FastClip every 7 steps (its PowerQR state is in the checkpoint)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 64, 10))
    batches = Batches(X, Y, batch_size=64, shuffle=True, seed=3,
                      augment=Augment(crop_pad=1, flip=True))
    if schedule == "clip":
        attach(model, ClipSpec(target=1.0, every=7), X[:1].float())
    opt = sgd(model, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = make_scheduler(opt, epochs=EPOCHS, steps_per_epoch=len(batches),
                           **SCHEDULES["triangle" if schedule in ("lookahead", "clip") else schedule])
    hooks = [Schedule(sched)]
    if schedule == "lookahead":
        hooks += [FreezeAfter(model, {"5.bias": 2}, len(batches)),
                  Lookahead(model, LOOKAHEAD, len(batches), EPOCHS * len(batches))]
    return model, batches, opt, hooks


def _train(checkpoint=None, grad_hook=None, precision="fp32", schedule="triangle"):
    model, batches, opt, hooks = _setup(schedule)
    fit(model, batches, epochs=EPOCHS, optimizer=opt, hooks=hooks, grad_hook=grad_hook,
        precision=precision, checkpoint=checkpoint)
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Stop(Exception):
    pass


def _stop_at(step):
    count = [0]

    def hook(model):
        count[0] += 1
        if count[0] == step:
            raise Stop  # dies inside step `step`: the checkpoint holds step - 1
    return hook


@pytest.fixture(scope="module")
def uninterrupted():
    runs = {("fp32", "triangle"): _train(), ("bf16", "triangle"): _train(precision="bf16")}
    runs.update({("fp32", s): _train(schedule=s) for s in ("step", "cosine", "lookahead", "clip")})
    return {key: model for key, model in runs.items()}


@pytest.mark.parametrize("stop", [17, 29, 30, 70])  # 29 steps per epoch: mid-epoch, boundaries
@pytest.mark.parametrize("precision, schedule", [("fp32", "triangle"), ("bf16", "triangle"),
                                                 ("fp32", "step"), ("fp32", "cosine"),
                                                 ("fp32", "lookahead"), ("fp32", "clip")])
def test_a_stopped_training_resumes_to_the_uninterrupted_model(tmp_path, uninterrupted, stop,
                                                                precision, schedule):
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        _train(TrainCheckpoint(path, every_s=0, tag="t"), grad_hook=_stop_at(stop),
               precision=precision, schedule=schedule)
    resumed = _train(TrainCheckpoint(path, every_s=0, tag="t"), precision=precision,
                     schedule=schedule)
    assert _same(resumed, uninterrupted[precision, schedule])
    # The checkpoint of the finished training stays (the cache removes it with the partial dir
    # once the model is stored); a job killed in between resumes it and trains nothing more.
    again = _train(TrainCheckpoint(path, every_s=0, tag="t"), precision=precision,
                   schedule=schedule, grad_hook=_stop_at(1))
    assert _same(again, uninterrupted[precision, schedule])


def test_resuming_without_restoring_the_rng_would_differ(tmp_path, uninterrupted, monkeypatch):
    """The test above can fail: skip restoring the global RNG (dropout) and the model differs."""
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        _train(TrainCheckpoint(path, every_s=0, tag="t"), grad_hook=_stop_at(40))
    monkeypatch.setattr(TrainCheckpoint, "restore_global_rng", lambda self, device: None)
    assert not _same(_train(TrainCheckpoint(path, every_s=0, tag="t")), uninterrupted["fp32", "triangle"])


def _signal_at(step, signum):
    count = [0]

    def hook(model):
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signum)
    return hook


def test_sigterm_saves_then_stops_and_the_rerun_resumes(tmp_path, uninterrupted, caplog):
    path = tmp_path / "train.ckpt"
    with pytest.raises(Preempted, match="SIGTERM at epoch 2, step 6"):
        # every_s=None: no periodic checkpoint, only the one the signal asks for
        _train(TrainCheckpoint(path, every_s=None, tag="t"),
               grad_hook=_signal_at(35, signal.SIGTERM))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # our handler is gone again
    with caplog.at_level(logging.INFO, logger="runner.checkpoint"):
        resumed = _train(TrainCheckpoint(path, every_s=None, tag="t"))
    assert "resuming from epoch 2, step 6" in caplog.text
    assert _same(resumed, uninterrupted["fp32", "triangle"])


def test_a_previous_handler_runs_after_the_checkpoint_is_written(tmp_path, uninterrupted):
    """submitit's USR2 handler requeues the job: it must find the checkpoint on disk. A handler
    that returns (submitit's SIGTERM bypass) lets training go on undisturbed."""
    path, seen = tmp_path / "train.ckpt", []

    def previous(signum, frame):
        seen.append((signum, path.exists()))

    old = signal.signal(signal.SIGUSR2, previous)
    try:
        model = _train(TrainCheckpoint(path, every_s=None, tag="t"),
                       grad_hook=_signal_at(10, signal.SIGUSR2))
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert seen == [(signal.SIGUSR2, True)]
    assert _same(model, uninterrupted["fp32", "triangle"])


def test_a_damaged_checkpoint_is_reported_and_training_starts_over(tmp_path, uninterrupted,
                                                                    caplog):
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        _train(TrainCheckpoint(path, every_s=0, tag="t"), grad_hook=_stop_at(50))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="runner.checkpoint"):
        model = _train(TrainCheckpoint(path, every_s=0, tag="t"))
    assert "damaged" in caplog.text
    assert _same(model, uninterrupted["fp32", "triangle"])


def test_a_checkpoint_from_another_device_is_not_resumed(tmp_path, uninterrupted, caplog):
    """A generator state of one device type cannot seed another's: such a checkpoint (a GPU job
    preempted, then rerun on a CPU) is set aside and training starts over."""
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        _train(TrainCheckpoint(path, every_s=0, tag="t"), grad_hook=_stop_at(40))
    ckpt = TrainCheckpoint(path, every_s=0, tag="t")
    state = ckpt._read()
    state["device_type"] = "cuda"
    ckpt._write(state)
    with caplog.at_level(logging.WARNING, logger="runner.checkpoint"):
        model = _train(TrainCheckpoint(path, every_s=0, tag="t"))
    assert "training from scratch" in caplog.text and "'cuda'" in caplog.text
    assert _same(model, uninterrupted["fp32", "triangle"])


class _SignalAtTheEnd(torch.optim.lr_scheduler.StepLR):
    def step(self, *args):
        super().step(*args)
        if self.last_epoch == EPOCHS:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_after_the_last_step_is_not_lost(tmp_path, uninterrupted):
    """SIGTERM during the per-epoch scheduler step that ends training: no step follows, so the
    end of fit saves the finished training and stops; the rerun resumes it and trains nothing."""
    path = tmp_path / "train.ckpt"
    model, batches, opt, _ = _setup("step")
    sched = _SignalAtTheEnd(opt, step_size=1, gamma=0.5)
    with pytest.raises(Preempted, match=f"epoch {EPOCHS + 1}, step 0"):
        fit(model, batches, epochs=EPOCHS, optimizer=opt, scheduler=sched,
            checkpoint=TrainCheckpoint(path, every_s=None, tag="t"))
    resumed = _train(TrainCheckpoint(path, every_s=None, tag="t"), schedule="step",
                     grad_hook=_stop_at(1))  # would raise if any step ran
    assert _same(resumed, uninterrupted["fp32", "step"])


def test_a_requeue_by_the_previous_handler_counts_as_preemption(tmp_path):
    """submitit's handler requeues and exits (SystemExit): the run is recorded as preempted."""
    from runner.checkpoint import is_preemption

    def requeue(signum, frame):
        raise SystemExit(144)

    old = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit) as info:
            _train(TrainCheckpoint(tmp_path / "train.ckpt", every_s=None, tag="t"),
                   grad_hook=_signal_at(5, signal.SIGUSR2))
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert is_preemption(info.value) and not is_preemption(SystemExit(1))
    assert info.value.code == 144  # the exit code submitit's local executor requeues on


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "train.ckpt"
    with pytest.raises(Stop):
        _train(TrainCheckpoint(path, every_s=0, tag="original/abc"), grad_hook=_stop_at(3))
    with pytest.raises(ValueError, match="original/abc"):
        _train(TrainCheckpoint(path, every_s=0, tag="retrain/def"))


def test_checkpoint_every_s_is_validated(make_cfg):
    for bad in ("-1", "'often'", "true"):
        with pytest.raises(ConfigError, match="checkpoint.every_s"):
            validate(make_cfg(f"checkpoint.every_s={bad}"))
    validate(make_cfg("checkpoint.every_s=null"))


# -- the cache's build lock ------------------------------------------------------------------

def _build_in_process(root, log_path, barrier):
    barrier.wait()  # all processes ask for the missing artifact at the same moment

    def write(directory):
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a build that takes a while: the others must wait, not build too
        (directory / "value.txt").write_text("built")

    _, _, hit = Cache(root).get_or_build("original", {"s": 1}, write)
    with open(log_path, "a") as f:
        f.write(f"hit={hit}\n")


def test_concurrent_jobs_build_a_missing_artifact_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, log_path = ctx.Barrier(4), tmp_path / "builds.log"
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "cache", log_path, barrier))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    lines = log_path.read_text().split()
    builds = [line for line in lines if not line.startswith("hit=")]
    assert len(builds) == 1
    assert sorted(line for line in lines if line.startswith("hit=")) == ["hit=False"] + ["hit=True"] * 3
    kind_dir = tmp_path / "cache" / "original"
    assert not [p for p in kind_dir.iterdir() if p.name.startswith((".tmp", ".partial"))]


def test_a_filesystem_without_locks_still_builds_and_resumes_nothing(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cache, partial = Cache(tmp_path), []

    def write(directory):
        partial.append(cache.partial_dir("original", key))
        (directory / "value.txt").write_text("built")

    from runner.cache import key_of
    key = key_of({"s": 1})
    with caplog.at_level(logging.WARNING, logger="runner.cache"):
        path, _, hit = cache.get_or_build("original", {"s": 1}, write)
    assert not hit and (path / "value.txt").read_text() == "built"
    assert "no file locks" in caplog.text
    assert partial == [None]  # two builders could write one checkpoint: no resuming without locks
