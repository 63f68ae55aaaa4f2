"""Atomic writes: moved to :mod:`mlx_plugins.kernel.atomic` (the bottom layer, so that plugins
use it without importing upward); this name stays for the platform's own modules."""

from mlx_plugins.kernel.atomic import (
    TEMP_INFIX,
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    temp_path_for,
)

__all__ = ["TEMP_INFIX", "atomic_open", "atomic_write_bytes", "atomic_write_text", "temp_path_for"]
