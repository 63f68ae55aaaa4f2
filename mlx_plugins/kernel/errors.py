"""Errors a user sees when a composition is wrong. Each names the file, the key and the fix."""

from __future__ import annotations


class CompositionError(ValueError):
    """One clear problem in a composition file."""

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{file}: {key}: {problem}\n  fix: {fix}")


class PluginNotFoundError(LookupError):
    pass
