"""Content-addressed artifact cache: `<root>/<kind>/<key>/`.

key = sha256 of exactly the spec that determines the artifact (dataset fingerprint, model, recipe,
seed, training-index digest, ...) plus CODE_VERSION. Every artifact directory carries a manifest
with the sha256 and size of each file, written last and verified on every load: a truncated or
corrupted artifact is reported, deleted and rebuilt, never used. Writes go to a temp dir that is
renamed into place, so readers never see a partial artifact.

Many jobs share one cache (a sweep, an array of reference models on a cluster). A job that misses
takes the key's build lock (`flock` on `<root>/.locks/<kind>/<key>`, which Linux NFS clients map to
NFS locks) and looks again before building, so jobs that need the same missing artifact build it once
and the others wait and then load it. The kernel drops the lock of a job that dies, even by
SIGKILL. Where the filesystem has no locks (Lustre mounted without `flock`), jobs race instead:
each builds into its own temp dir, the first rename wins, and a loser discards its copy and uses
the winner's. While it holds the lock a build may keep resumable state in `<kind>/.partial-<key>/`
(`partial_dir`), removed when the artifact is in place; a rerun of a killed build resumes from it.
"""

from __future__ import annotations

import ast
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

log = logging.getLogger("runner.cache")

# Bump to invalidate every artifact at once (e.g. after a fix outside the fingerprinted files).
CODE_VERSION = 1
MANIFEST = "manifest.json"


def code_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the syntax trees of Python files, without docstrings: editing code that
    determines a trained model changes cache keys; editing its comments or docstrings does not."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(path.name.encode() + ast.dump(tree).encode())
    return h.hexdigest()[:20]


def key_of(spec: Mapping[str, Any]) -> str:
    """Stable hash of a JSON-able spec (key order does not matter)."""
    blob = json.dumps({"code_version": CODE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Temp build dirs are named .tmp-<key>-<HOST>-<pid>-<random>, so a later build on the same host
# can tell which were left by a killed process.
HOST = socket.gethostname().replace("/", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# The build locks this process holds, as (root, kind, key).
_HELD: set[tuple[Path, str, str]] = set()

# flock errors that mean "this filesystem has no locks", not "someone else holds it".
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Cache:
    def __init__(self, root: str | Path, *, locks: bool = True):
        self.root = Path(root).resolve()
        self.locks = locks

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        """Whether the artifact is there (unverified: for planning; `load` verifies)."""
        return (self.path(kind, key) / MANIFEST).is_file()

    def load(self, kind: str, key: str) -> Path | None:
        """The verified artifact directory, or None if absent; a corrupt one is removed."""
        final = self.path(kind, key)
        if not final.exists():
            return None
        problem = self._verify(final)
        if problem is None:
            return final
        log.warning("cache: %s/%s is corrupt (%s); deleting and rebuilding it", kind, key, problem)
        shutil.rmtree(final, ignore_errors=True)
        return None

    def get_or_build(self, kind: str, spec: Mapping[str, Any],
                     write: Callable[[Path], None]) -> tuple[Path, str, bool]:
        """Return (artifact dir, key, hit). On a miss, `write(tmp_dir)` fills a fresh directory."""
        key = key_of(spec)
        found = self.load(kind, key)
        if found is not None:
            log.info("cache hit: %s/%s", kind, key)
            return found, key, True
        with self._build_lock(kind, key):
            found = self.load(kind, key)  # another job may have built it while this one waited
            if found is not None:
                log.info("cache hit: %s/%s (built by another job)", kind, key)
                return found, key, True
            log.info("cache miss: %s/%s, building", kind, key)
            self._build(kind, key, spec, write)
            shutil.rmtree(self.root / kind / f".partial-{key}", ignore_errors=True)
        return self.path(kind, key), key, False

    def partial_dir(self, kind: str, key: str) -> Path | None:
        """Where the build of kind/key in progress keeps state to resume from after a kill (it
        survives the job, and goes when the artifact is in place). None unless this process holds
        the key's build lock: without locks two jobs could write the same state at once."""
        if (self.root, kind, key) not in _HELD:
            return None
        path = self.root / kind / f".partial-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _build(self, kind: str, key: str, spec: Mapping[str, Any],
               write: Callable[[Path], None]) -> None:
        self._remove_dead_builds(kind)
        tmp = self.root / kind / f".tmp-{key}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            self._write_manifest(tmp, spec)
            final = self.path(kind, key)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another job finished the same key first: keep theirs if it is sound.
                if self.load(kind, key) is None:
                    os.rename(tmp, final)
                else:
                    log.info("cache: %s/%s was built concurrently; using that copy", kind, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_dead_builds(self, kind: str) -> None:
        """Remove the temp dirs that builds on this host left when they were killed (SIGKILL runs
        no cleanup): those whose process is gone. Another host's are left alone, since its pids
        mean nothing here."""
        for tmp in (self.root / kind).glob(".tmp-*"):
            host, _, rest = tmp.name[len(".tmp-") + 21:].rpartition("-")[0].rpartition("-")
            if host != HOST or not rest.isdigit() or _alive(int(rest)):
                continue
            log.info("cache: removing %s, left by a killed build (pid %s)", tmp, rest)
            shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def _build_lock(self, kind: str, key: str):
        """Hold kind/key's build lock for the block (without one, if the filesystem has none)."""
        if not self.locks:
            yield
            return
        held = (self.root, kind, key)
        if held in _HELD:
            # A second open + flock of the same file would wait for this very process forever.
            raise RuntimeError(f"cache: {kind}/{key} is already being built by this process")
        lock_path = self.root / ".locks" / kind / key
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file stays: deleting it while another job waits on it would let a third job
        # lock a new file of the same name, and two builds would run at once.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                log.info("cache: waiting for another job to finish building %s/%s", kind, key)
                start = time.monotonic()
                fcntl.flock(fd, fcntl.LOCK_EX)
                log.info("cache: waited %.1f s for %s/%s", time.monotonic() - start, kind, key)
                locked = True
            except OSError as err:
                if err.errno not in NO_LOCKS:
                    raise
                log.warning("cache: %s has no file locks (%s); jobs that need %s/%s at the same "
                            "time may each build it (the first copy is kept), and a killed build "
                            "cannot resume", self.root, os.strerror(err.errno), kind, key)
                locked = False
            if locked:
                _HELD.add(held)
            yield
        finally:
            _HELD.discard(held)
            os.close(fd)  # releases the lock

    def _write_manifest(self, directory: Path, spec: Mapping[str, Any]) -> None:
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(directory.iterdir()) if p.is_file()}
        manifest = {"code_version": CODE_VERSION, "created": time.time(), "spec": spec,
                    "files": files}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))

    @staticmethod
    def _verify(directory: Path) -> str | None:
        """Why the artifact in `directory` cannot be used, or None. Its manifest must be the one
        this code writes, for this very key (an artifact copied under another key's name is
        corrupt), and every file it lists must be there with its size and checksum."""
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            return f"unreadable manifest: {err}"
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if (not isinstance(files, dict) or not files or "spec" not in manifest
                or not all(isinstance(m, dict) and {"sha256", "bytes"} <= set(m)
                           for m in files.values())):
            return "the manifest is not an artifact's (no spec or no file list)"
        if manifest.get("code_version") != CODE_VERSION:
            return (f"written by code version {manifest.get('code_version')!r}, this is "
                    f"{CODE_VERSION}")
        if key_of(manifest["spec"]) != directory.name:
            return f"its manifest describes key {key_of(manifest['spec'])}, not {directory.name}"
        for name, meta in files.items():
            p = directory / name
            if not p.is_file():
                return f"missing {name}"
            if p.stat().st_size != meta["bytes"]:
                return f"{name} has {p.stat().st_size} bytes, expected {meta['bytes']}"
            if _sha256(p) != meta["sha256"]:
                return f"{name} checksum mismatch"
        return None

def save_model(directory: Path, model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), directory / "model.pt")


def load_model(directory: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load weights into `model` (weights_only: a checkpoint cannot run code)."""
    state = torch.load(directory / "model.pt", map_location=next(model.parameters()).device,
                       weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's state (names, dtypes, shapes, bytes): the key of a model that is not
    itself a cache artifact, such as the model after an unlearning request."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{array.dtype}:{list(array.shape)};".encode())
        h.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
