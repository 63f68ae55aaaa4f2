"""Code versions from source: an asset's code version changes when its module's text does."""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_version(module_file: str) -> str:
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:12]
