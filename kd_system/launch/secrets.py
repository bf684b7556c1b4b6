"""Settings that name an environment variable instead of holding a secret: ``env:NAME``.

``store.redis_url`` carries the Redis password. Written as ``env:KD_REDIS_URL`` it stays out of
config files, the run directory's saved config, command lines and Ray's job table; each
deployment sets the variable from its own secret store (.env, a Kubernetes Secret). The head
resolves the reference when it starts, so a resumed run reads the variable again.
"""
from __future__ import annotations

import os
import re

from kd_system.config import RunConfig
from kd_system.errors import ConfigError

PREFIX = "env:"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_env_ref(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def env_ref_name(value: str, field: str) -> str:
    name = value[len(PREFIX):]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{field}: {value!r} is not env:NAME with NAME an environment variable, e.g. env:KD_REDIS_URL")
    return name


def resolve_redis_url(value: str | None, field: str = "store.redis_url") -> str | None:
    """The URL itself; an ``env:NAME`` reference is replaced by that variable's value."""
    if not is_env_ref(value):
        return value
    name = env_ref_name(value, field)
    url = os.environ.get(name, "")
    if not url:
        raise ConfigError(f"{field} is {value} but environment variable {name} is not set: export "
                          f"{name}=redis://:PASSWORD@HOST:PORT/0 (deploy/entrypoint.sh builds it from REDIS_PASSWORD)")
    if not url.startswith(REDIS_SCHEMES):
        raise ConfigError(f"environment variable {name} (named by {field}) must hold a redis://, rediss:// or "
                          "unix:// URL; fix its value")
    return url


def with_secrets(config: RunConfig) -> RunConfig:
    """The config the processes run with: env references resolved. Save the original instead."""
    url = resolve_redis_url(config.store.redis_url)
    if url == config.store.redis_url:
        return config
    return config.model_copy(update={"store": config.store.model_copy(update={"redis_url": url})})
