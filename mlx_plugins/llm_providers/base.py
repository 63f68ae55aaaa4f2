"""The ``llm_provider`` kind (any number per platform, called in parallel)."""

from __future__ import annotations

from abc import abstractmethod

from pydantic import BaseModel, ConfigDict

from mlx_plugins.kernel.base import MLXPlugin


class Completion(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    text: str
    input_tokens: int = 0
    output_tokens: int = 0


class LLMProvider(MLXPlugin):
    @abstractmethod
    def complete(self, prompt: str, *, max_tokens: int = 256) -> Completion: ...
