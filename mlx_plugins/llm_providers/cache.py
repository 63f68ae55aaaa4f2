"""The persistent LLM result cache: a hit makes no call, so nothing is billed twice.

One ``diskcache`` store (SQLite + files) in the MLX home (``<home>/cache/llm`` by default),
shared by every process on the machine. An entry's key is a SHA-256 over the provider's
parameters (:meth:`LLMProvider.cache_params`: provider, server, model, max tokens,
temperature) and the hashes of the system text and the prompt; its value is the
:class:`Completion`. Entries expire after ``ttl_s`` and the store is kept under ``size_mb``
(least recently stored first out).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlx_plugins.llm_providers.base import Completion


def cache_key(params: dict[str, Any], prompt: str, system: str | None = None) -> str:
    """The cache key (64 hex chars) of ``prompt`` (and ``system``) sent with ``params``."""
    payload = {
        "params": params,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "system_sha256": hashlib.sha256((system or "").encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ResultCache:
    """Completions by :func:`cache_key`, on disk.

    Args:
        directory: the store's folder (created).
        ttl_s: seconds an entry lives (> 0), or None for no expiry.
        size_mb: size bound of the store in MiB (> 0).

    Raises:
        ValueError: ``ttl_s`` or ``size_mb`` is not positive.
    """

    def __init__(self, directory: str | Path, *, ttl_s: float | None, size_mb: float) -> None:
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"cache ttl_s must be > 0 seconds or null, got {ttl_s!r}")
        if size_mb <= 0:
            raise ValueError(f"cache size_mb must be > 0, got {size_mb!r}")
        import diskcache

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._cache = diskcache.Cache(
            str(self.directory),
            size_limit=int(size_mb * 1024 * 1024),
            eviction_policy="least-recently-stored",
        )

    def get(self, key: str) -> Completion | None:
        """The stored completion, or None (absent, expired or unreadable)."""
        raw = self._cache.get(key)
        if raw is None:
            return None
        try:
            return Completion.model_validate_json(raw)
        except ValueError:
            self._cache.delete(key)
            return None

    def set(self, key: str, completion: Completion) -> None:
        """Store ``completion`` under ``key`` for ``ttl_s`` seconds."""
        self._cache.set(key, completion.model_dump_json(), expire=self.ttl_s)

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        """Bytes the store takes on disk."""
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()
