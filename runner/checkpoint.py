"""Resumable training: `fit` saves its whole state now and then, and a rerun picks it up.

A model trained from scratch (the original, the retrain oracle, a reference or shadow model) is a
cache artifact; while its build holds the cache lock, `TrainCheckpoint` keeps the training state in
the artifact's partial dir. A job that dies (SIGKILL, a node failure, a SLURM time limit) leaves the
last checkpoint behind, and the next job that needs the artifact resumes from it and ends with the
model an uninterrupted run makes: the checkpoint holds the weights, the optimizer state, each
training hook's state (the schedule, an EMA, FastClip's; runner.hooks), the step reached
within the epoch, the batch generator's state at the start of that epoch
(the resumed epoch replays the same permutation and augmentation draws, skipping the steps already
done) and the global RNG state at the step.

Checkpoints are written every `every_s` seconds of training, at a step boundary, and when the job
is told it will be stopped: SIGTERM, SIGUSR1 or SIGUSR2 (SLURM's `--signal`, submitit's
preemption and time-out signal). On such a signal the step in flight finishes, the checkpoint is
written, and then the handler that was installed before ours runs (submitit's requeues the job and
exits); without one, `fit` raises `Preempted`. Either way the run is recorded as preempted
(`is_preemption`). A signal that arrives after the last step is handled the same way at the end of
`fit`, and one that arrives as training returns is passed on to the restored handler: none is lost.

A checkpoint resumes only on the device type, torch version and (on a CPU) intra-op thread count
that wrote it (the generator states, or a CPU's floating-point reductions, differ between them),
and only into a training with the same kinds of hooks; otherwise training starts over with a
warning. (The thread count is also in the model's cache key,
so through the cache a resume at another count cannot happen; the check guards other callers.)
The checkpoint stays after training ends: the cache removes the partial dir once the model is in
place, so a job killed in between resumes at the end instead of starting over.

The file is one sha256 hex digest line followed by the `torch.save` payload, written to a temp file
and renamed into place: a reader sees the old checkpoint or the new one, and a damaged one is
detected, reported and ignored (training restarts from scratch).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("runner.checkpoint")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def is_preemption(err: BaseException) -> bool:
    """Whether `err` ends a run that was stopped by a signal after saving its checkpoint."""
    return isinstance(err, Preempted) or getattr(err, "after_checkpoint", False)


class Preempted(BaseException):
    """Training stopped on a signal after saving its checkpoint; a rerun resumes it. Not an
    Exception: the process is being stopped, so nothing may catch this and go on (Hydra's basic
    launcher would otherwise record the job as failed and start the next job of the sweep)."""


def _stateful(hooks) -> list:
    """The hooks with a state to save (a gradient mask's or a test's probe has none)."""
    return [hook for hook in hooks if hook.state_dict() is not None]


class TrainCheckpoint:
    """The training state of one model, in `path`, saved every `every_s` seconds (0: after every
    step; None: only on a signal). `tag` names the model in messages."""

    def __init__(self, path: Path, every_s: float | None, tag: str):
        self.path, self.every_s, self.tag = Path(path), every_s, tag
        self.pending: list[int] = []  # signals received and not yet handed on, in order
        self._previous: dict[int, object] = {}
        self._last_save = time.monotonic()
        self._epoch_rng: torch.Tensor | None = None
        self._global_rng: dict | None = None
        self.loss_total: torch.Tensor | None = None  # of the resumed epoch's finished steps

    # -- what fit calls ---------------------------------------------------------------------
    def resume(self, model, optimizer, hooks, batches) -> tuple[int, int]:
        """Load the saved state into the objects; returns (epoch, steps done in it), (0, 0) when
        there is nothing to resume. `batches.gen` is left at the start of the saved epoch."""
        state = self._read()
        if state is None:
            return 0, 0
        device = next(model.parameters()).device
        here = self._where(device, hooks)
        there = {k: state.get(k) for k in here}
        if there != here:
            log.warning("%s: the checkpoint was written with %s, this job runs %s: training "
                        "from scratch", self.tag, there, here)
            return 0, 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # It stepped before the checkpoint: torch's "scheduler before optimizer" warning, which a
        # run resumed at an epoch's end would print, does not apply.
        optimizer._opt_called = True
        for hook, saved in zip(_stateful(hooks), state["hook_states"]):
            hook.load_state_dict(saved)
        batches.gen.set_state(state["epoch_rng"])
        self._global_rng = state["global_rng"]
        self.loss_total = state["loss_total"]
        log.info("%s: resuming from epoch %d, step %d (%s)", self.tag, state["epoch"] + 1,
                 state["step"], self.path)
        return state["epoch"], state["step"]

    def restore_global_rng(self, device: torch.device) -> None:
        """After the resumed epoch has skipped its finished steps: the RNG as it was at the step."""
        rng, self._global_rng = self._global_rng, None
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] is not None:
                torch.cuda.set_rng_state(rng["cuda"], device)

    def epoch_start(self, batches) -> None:
        self._epoch_rng = batches.gen.get_state()

    def after_step(self, epoch: int, step: int, model, optimizer, hooks,
                   loss_total: torch.Tensor) -> None:
        """Save if it is time or a signal came; then hand the signal on (see the module doc)."""
        due = self.every_s is not None and time.monotonic() - self._last_save >= self.every_s
        if not (due or self.pending):
            return
        device = next(model.parameters()).device
        self._write({
            "tag": self.tag, "epoch": epoch, "step": step, **self._where(device, hooks),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "hook_states": [hook.state_dict() for hook in _stateful(hooks)],
            "epoch_rng": self._epoch_rng, "loss_total": loss_total.detach().cpu(),
            "global_rng": {"cpu": torch.get_rng_state(),
                           "cuda": (torch.cuda.get_rng_state(device)
                                    if device.type == "cuda" else None)},
        })
        while self.pending:
            self._hand_on(self.pending.pop(0), epoch, step)

    def finish(self, epochs: int, model, optimizer, hooks) -> None:
        """At the end of training: a signal that came after the last step is handled as in
        `after_step`, with a checkpoint of the finished training (epoch `epochs`, nothing left)."""
        if self.pending:
            self.after_step(epochs, 0, model, optimizer, hooks, torch.zeros(()))

    @contextmanager
    def catching_signals(self):
        """Our handlers for SIGNALS during training (only the main thread may install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._previous = {s: signal.signal(s, self._note_signal) for s in SIGNALS}
        stopping = True
        try:
            yield
            stopping = False
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self._previous = {}
            late, self.pending = self.pending, []
            if not stopping:  # (when stopping anyway, the process is on its way out)
                for s in late:  # came after the last check: the restored handler gets it
                    signal.raise_signal(s)

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _where(device: torch.device, hooks) -> dict:
        """What a checkpoint must share with the training that resumes it."""
        return {"device_type": device.type, "torch": str(torch.__version__),
                "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
                "hooks": [type(hook).__name__ for hook in _stateful(hooks)]}

    def _note_signal(self, signum, frame) -> None:
        # Only a note: the step in flight finishes and after_step saves.
        if signum not in self.pending:
            self.pending.append(signum)

    def _hand_on(self, signum: int, epoch: int, step: int) -> None:
        name = signal.Signals(signum).name
        log.warning("%s: %s received; checkpoint saved at epoch %d, step %d", self.tag, name,
                    epoch + 1, step)
        previous = self._previous.get(signum)
        if callable(previous):
            try:
                previous(signum, None)  # submitit's requeue exits here; a bypass returns
            except BaseException as err:
                err.after_checkpoint = True  # the run is recorded as preempted, not failed
                raise
        elif previous != signal.SIG_IGN:
            raise Preempted(f"{self.tag}: stopped by {name} at epoch {epoch + 1}, step {step}; "
                            "the checkpoint is saved and rerunning the same command resumes it")

    def _write(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._last_save = time.monotonic()

    def _read(self) -> dict | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        digest, _, payload = blob.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            log.warning("%s: checkpoint %s is damaged (checksum mismatch); training from scratch",
                        self.tag, self.path)
            self.path.unlink(missing_ok=True)
            return None
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if state.get("tag") != self.tag:
            raise ValueError(f"{self.path} holds the training state of {state.get('tag')!r}, "
                             f"not of {self.tag!r}")
        return state
