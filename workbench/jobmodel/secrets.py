"""Which environment variables look secret, masking their values in everything shown, and the
credentials a built-in kind gets from the daemon's memory instead of the store."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


# ---- credentials held out of every stored copy -------------------------------------------------
#
# A built-in kind's credentials (S3 keys, a PostgreSQL password, a password written in a source
# URL) never reach state.db, a spec, a log, a run folder or a process's argv: at submit they are
# taken out of the job's environment and spec (`hold_credentials`) and handed to the running
# daemon, which keeps them in memory only and puts them in the job's environment when it starts
# (workbench.daemon.credentials). The job's row keeps their names, never their values.

#: Credential variables of the sources the `ingest` kind reads (AWS's credential chain, libpq).
CREDENTIAL_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "PGPASSWORD",
)
S3_NAMES = CREDENTIAL_NAMES[:4]
POSTGRES_NAMES = ("PGPASSWORD",)
#: A password taken out of a source URL is handed to the job under this prefix and a hash of
#: the URL without it (`url_password_name`).
URL_PASSWORD_PREFIX = "WORKBENCH_URL_PASSWORD_"


@dataclass(frozen=True)
class HeldCredentials:
    """Credentials a job gets from the daemon's memory, never from the store.

    `token`: 32 hex digits naming them to the daemon (stored with the job; it gives nothing
    away). `values`: name -> value (only in memory). `needed`: the names the job cannot run
    without (a subset of `values`' keys, sorted); `urls`: for a needed URL password's name,
    the URL it belongs to, without the password (what messages name)."""

    token: str
    values: dict[str, str] = field(repr=False)
    needed: tuple[str, ...]
    urls: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the store keeps: the token and the names (never a value)."""
        return {"token": self.token, "names": list(self.needed), "urls": self.urls}


def without_url_password(url: str) -> tuple[str, str | None]:
    """`scheme://user:pass@host/...` as (`scheme://user@host/...`, `pass` unquoted); a URL
    without a password as (url, None)."""
    import urllib.parse

    try:
        parsed = urllib.parse.urlsplit(url)
        password = parsed.password
    except ValueError:
        return url, None
    if password is None or "://" not in url:
        return url, None
    userinfo, _, hostport = parsed.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if user else hostport
    return parsed._replace(netloc=netloc).geturl(), urllib.parse.unquote(password)


def url_password_name(shown_url: str) -> str:
    """The environment variable a job finds the password of `shown_url` (a URL without its
    password) in: the prefix and 16 hex digits of its BLAKE2b hash."""
    import hashlib

    digest = hashlib.blake2b(shown_url.encode(errors="surrogateescape"), digest_size=8)
    return URL_PASSWORD_PREFIX + digest.hexdigest()


def with_url_password(shown_url: str, environ: Mapping[str, str]) -> str:
    """`shown_url` with the password handed for it (`url_password_name`) put back, quoted; the
    URL unchanged when none was handed."""
    import urllib.parse

    password = environ.get(url_password_name(shown_url))
    if password is None:
        return shown_url
    parsed = urllib.parse.urlsplit(shown_url)
    userinfo, at, hostport = parsed.netloc.rpartition("@")
    quoted = urllib.parse.quote(password, safe="")
    return parsed._replace(netloc=f"{userinfo}:{quoted}@{hostport}" if at else hostport).geturl()


def _sources(spec: Mapping[str, Any]) -> list[str]:
    source = spec.get("source")
    if isinstance(source, str):
        return [source]
    if isinstance(source, list):
        return [s for s in source if isinstance(s, str)]
    return []


def hold_credentials(
    kind: str, spec: dict[str, Any], env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str], HeldCredentials | None]:
    """Take a job's credentials out of what is stored: returns (spec, env, held).

    For every kind but `command` (whose environment is the user's, kept as captured) the
    variables of `CREDENTIAL_NAMES` leave `env`; an ingest source with a password in its URL
    (`postgresql://user:pass@host/db`, `https://user:pass@host/f.csv`) is rewritten without
    it. Those the job needs (the S3 variables for an `s3://` source, PGPASSWORD for a
    PostgreSQL one, every URL password) are in `held`; the rest are dropped (the kind never
    reads them). `held` is None when nothing is needed. Pure: the inputs are not changed."""
    if kind == "command":
        return spec, env, None
    kept = {k: v for k, v in env.items() if k not in CREDENTIAL_NAMES}
    values: dict[str, str] = {}
    urls: dict[str, str] = {}
    sources = _sources(spec)
    shown_sources: list[str] = []
    for source in sources:
        shown, password = without_url_password(source)
        shown_sources.append(shown)
        if password is not None:
            name = url_password_name(shown)
            values[name] = password
            urls[name] = shown
    lowered = [s.lower() for s in sources]
    wanted: list[str] = []
    if any(s.startswith("s3://") for s in lowered):
        wanted += S3_NAMES
    if any(s.startswith(("postgresql://", "postgres://")) for s in lowered):
        wanted += POSTGRES_NAMES
    values.update({name: env[name] for name in wanted if name in env})
    if urls:
        source = spec["source"]
        spec = {**spec, "source": shown_sources if isinstance(source, list) else shown_sources[0]}
    if not values:
        return spec, kept, None
    import secrets

    held = HeldCredentials(secrets.token_hex(16), values, tuple(sorted(values)), urls)
    return spec, kept, held


def needed_label(name: str, urls: Mapping[str, str]) -> str:
    """How a message names a needed credential: the variable, or `the password of URL`."""
    return f"the password of {urls[name]}" if name in urls else name


def hold_named(
    env: dict[str, str], names: Iterable[str], held: HeldCredentials | None
) -> tuple[dict[str, str], HeldCredentials | None, list[str]]:
    """Hold the variables `names` (a job's `secret_env`, any kind) out of `env` too: returns
    (env without them, the held credentials with them added as needed, the names `env` lacks).
    Pure."""
    import secrets

    wanted = list(dict.fromkeys(names))
    missing = [name for name in wanted if name not in env]
    if not wanted or missing:
        return env, held, missing
    values = {**(held.values if held else {}), **{name: env[name] for name in wanted}}
    needed = tuple(sorted({*(held.needed if held else ()), *wanted}))
    token = held.token if held else secrets.token_hex(16)
    kept = {k: v for k, v in env.items() if k not in wanted}
    return kept, HeldCredentials(token, values, needed, held.urls if held else {}), []
