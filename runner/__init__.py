"""The experiment runner. Importing it registers the resolvers its Hydra config uses for run and
job directory names (`python -m runner`, every launcher's worker and the tests import it first)."""

from __future__ import annotations

import hashlib
import os

from omegaconf import OmegaConf

# A path component may have 255 bytes; Hydra names a sweep job's dir after its overrides, which a
# sweep with a few long values (a dataset path, a dozen keys) passes. Longer names keep a readable
# head and end in a digest of the whole: distinct override lists still get distinct dirs.
MAX_DIRNAME = 120


def job_dirname(overrides: str) -> str:
    """A job dir name made from Hydra's override_dirname: '/' (from paths in values) becomes '_'
    so one job is one dir, and the name is at most MAX_DIRNAME bytes."""
    name = str(overrides).replace(os.sep, "_")
    raw = name.encode()
    if len(raw) <= MAX_DIRNAME:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[:MAX_DIRNAME - len(digest) - 2].decode(errors="ignore")
    return f"{head}__{digest}"


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
# The run's process id: with the time and the seed it makes a single run's default dir unique.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
