"""``settings.llm``: how the provider group runs, as a typed block of the composition.

The block is validated when the definitions are built (errors name ``settings.llm.<key>``) and
travels in its own resource, :class:`LLMSettings` under the key ``llm_settings``
(``mlx_assets.monitoring.incident_summary.LLM_SETTINGS_KEY``), bound only when the composition
has ``llm_provider`` plugins: the ``drift_incident_summary`` asset then requires it and builds
its :class:`~mlx_plugins.llm_providers.group.ProviderGroup` from ``llm_settings.llm``, and the
UI shows the effective settings as that resource's config. A composition without providers
neither binds the resource nor imports this module (unless it writes ``settings.llm``), so
the code location does not pay for the block's 23 config fields at every load.

Importing this module imports neither an SDK nor the group's libraries (purgatory, tenacity,
diskcache).

Example (``mlx.yaml``)::

    settings:
      llm:
        max_concurrency: 16
        breaker_threshold: 5
        hedge: adaptive        # or fixed (after hedge_after_s) or off
        cache_ttl_s: 604800
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import ConfigDict, Field, model_validator

from mlx_plugins.kernel.base import PluginConfig


class LLMGroupSettings(PluginConfig):
    """How a provider group runs (``settings.llm``). Times in seconds, sizes in MiB.

    Every field has a default; a misspelled key, a value of the wrong type (``true`` for a
    number, ``'8'`` for 8) or out of range is refused at load, naming ``settings.llm.<key>``.

    Raises:
        pydantic.ValidationError: a bad value (the composition loader turns it into a
            ``CompositionError`` naming the key and the fix).
    """

    model_config = ConfigDict(extra="forbid", strict=True)  # misspelled keys, true for 1: errors

    max_concurrency: int = Field(default=16, gt=0, description="Prompts in flight, overall.")
    per_provider_concurrency: int | None = Field(
        default=None,
        gt=0,
        description="Calls in flight per provider; None: 2 x max_concurrency (every prompt in "
        "flight and its hedge may go to one provider when the others' breakers are open).",
    )
    attempts: int = Field(
        default=2,
        ge=1,
        description="Tries per provider; retries are spent only on the last provider that "
        "could answer (another healthy provider is asked at once) unless "
        "retry_before_failover is true.",
    )
    retry_before_failover: bool = Field(
        default=False,
        description="Retry a failing provider (attempts) even while another provider could "
        "answer at once.",
    )
    backoff_initial_s: float = Field(default=0.2, ge=0, description="First retry wait.")
    backoff_max_s: float = Field(default=5.0, ge=0, description="Longest retry wait.")
    jitter_s: float = Field(default=0.2, ge=0, description="Random extra wait, at most this.")
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="Longest Retry-After honoured; longer fails over."
    )
    breaker_threshold: int = Field(
        default=5, gt=0, description="Consecutive retriable failures that open a breaker."
    )
    breaker_reset_s: float = Field(default=30.0, gt=0, description="Open -> half-open.")
    hedge: Literal["adaptive", "fixed", "off"] = Field(
        default="adaptive",
        description="adaptive: ask the next provider too when a call has taken longer than "
        "hedge_factor x the hedge_quantile of that provider's observed latency (hedge_after_s "
        "until hedge_min_samples calls answered); fixed: after hedge_after_s; off: never.",
    )
    hedge_after_s: float = Field(
        default=5.0,
        gt=0,
        description="fixed: the hedge delay; adaptive: the delay before enough latencies are "
        "known.",
    )
    hedge_quantile: float = Field(
        default=0.8, gt=0, lt=1, description="adaptive: the latency quantile hedged past."
    )
    hedge_factor: float = Field(
        default=1.15, ge=1, description="adaptive: the margin over that quantile."
    )
    hedge_min_s: float = Field(default=0.05, ge=0, description="adaptive: never sooner.")
    hedge_min_samples: int = Field(
        default=5, ge=1, description="adaptive: answered calls needed before adapting."
    )
    hedge_max: int = Field(
        default=2,
        ge=1,
        description="Hedges per prompt at most (each a paid call): while nothing has answered, "
        "another one after each further hedge delay.",
    )
    hedge_idle_after_s: float | None = Field(
        default=None,
        gt=0,
        description="Hedge sooner, after this, when no prompt is waiting for a slot (spare "
        "capacity: a batch's tail); None: fixed: always hedge_after_s, adaptive: "
        "hedge_idle_share x the adaptive delay.",
    )
    hedge_idle_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="adaptive, hedge_idle_after_s unset: the share of the hedge delay after "
        "which a prompt is hedged when no prompt is waiting for a slot (1: no sooner).",
    )
    routing: Literal["priority", "round_robin", "adaptive"] = Field(
        default="adaptive",
        description="priority: the composition's order; round_robin: each prompt starts on the "
        "next provider; adaptive: providers with fewer recent failures first (open breakers last).",
    )
    cache: bool = Field(default=True, description="The persistent result cache.")
    cache_ttl_s: float | None = Field(
        default=7 * 24 * 3600.0, gt=0, description="Entry lifetime; None: no expiry."
    )
    cache_size_mb: float = Field(default=256.0, gt=0, description="Size bound of the cache.")

    @model_validator(mode="after")
    def _consistent(self) -> LLMGroupSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) is below backoff_initial_s "
                f"({self.backoff_initial_s})\nfix: set backoff_max_s >= backoff_initial_s"
            )
        if self.hedge_idle_after_s is not None and self.hedge_idle_after_s > self.hedge_after_s:
            raise ValueError(
                f"hedge_idle_after_s ({self.hedge_idle_after_s}) is above hedge_after_s "
                f"({self.hedge_after_s})\nfix: set hedge_idle_after_s below hedge_after_s, "
                "or remove it"
            )
        return self

    @property
    def provider_concurrency(self) -> int:
        """Calls in flight per provider (``per_provider_concurrency`` or its default)."""
        return self.per_provider_concurrency or 2 * self.max_concurrency


class LLMSettings(dg.ConfigurableResource):
    """``settings.llm`` as a resource (key ``llm_settings``): the policy of the provider group
    that ``drift_incident_summary`` runs, in ``llm`` (every field has a default).

    Bound by ``mlx_assets.build.platform_resources`` when the composition has ``llm_provider``
    plugins, built from the composition's ``settings.llm`` (``{}`` when left out); its config
    is what the UI shows under the resource. The same field name and type as the composition's
    block, so a validation error's location (``llm.<key>``) reads as ``settings.llm.<key>``.

    Raises:
        pydantic.ValidationError: a bad value in ``llm`` (see :class:`LLMGroupSettings`).
    """

    llm: LLMGroupSettings = Field(
        default=LLMGroupSettings(),
        description="How the llm_provider plugins run as a group (docs/llm.md).",
    )

    model_config = ConfigDict(extra="forbid", strict=True)  # misspelled keys, true for 1: errors
