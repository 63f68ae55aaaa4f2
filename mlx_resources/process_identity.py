"""Process identities: moved to :mod:`mlx_plugins.kernel.process_identity` (the bottom layer,
so that the training plugins use it without importing upward); this name stays for the
platform's own modules."""

from mlx_plugins.kernel.process_identity import (
    PARENT_ENV,
    TAG_BOOT,
    TAG_HOST,
    TAG_PID,
    TAG_START,
    TAGS,
    ProcessIdentity,
    die_with_parent,
    identity,
    is_alive,
    parent_env,
    pid_running,
    process_start,
    with_parent_death,
)

__all__ = [
    "PARENT_ENV",
    "TAGS",
    "TAG_BOOT",
    "TAG_HOST",
    "TAG_PID",
    "TAG_START",
    "ProcessIdentity",
    "die_with_parent",
    "identity",
    "is_alive",
    "parent_env",
    "pid_running",
    "process_start",
    "with_parent_death",
]
