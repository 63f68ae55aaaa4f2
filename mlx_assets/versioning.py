"""Code versions from source: an asset's code version changes when its module's text does."""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_version(module_file: str) -> str:
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:12]


def config_fingerprint(value: object) -> str:
    """Short hash of the composition settings an asset's output depends on.

    ``value`` is any JSON-able structure (plugin names and configs as written, settings models
    dumped to dicts). ``{env: NAME}`` references hash as their variable NAME, never the value, so
    a secret neither leaks into the code version nor makes assets stale when it is rotated.

    Returns:
        12 hex characters; equal inputs give equal fingerprints across processes.
    """
    import json

    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
