"""Which environment variables look secret, and masking their values in everything shown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A name containing any of these (case-insensitive) is masked; config.toml can add more.
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")
MASK = "***"


def is_secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether an environment variable's name looks like it holds a secret."""
    upper = name.upper()
    return any(word.upper() in upper for word in (*SECRET_WORDS, *extra))


def mask_env(env: Mapping[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of `env` with the values of secret-looking names replaced by `***`."""
    words = tuple(extra)
    return {k: MASK if is_secret_name(k, words) else v for k, v in env.items()}


def mask_job_json(job: dict[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """A job's JSON object (`Job.to_json`) with secrets masked in `env` and in `spec.env`."""
    words = tuple(extra)
    out = dict(job)
    if isinstance(out.get("env"), Mapping):
        out["env"] = mask_env(out["env"], words)
    spec = out.get("spec")
    if isinstance(spec, Mapping) and isinstance(spec.get("env"), Mapping):
        out["spec"] = {**spec, "env": mask_env(spec["env"], words)}
    return out
