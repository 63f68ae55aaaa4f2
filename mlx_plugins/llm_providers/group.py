"""A provider group: a batch of prompts over every configured provider, in parallel.

``ProviderGroup.run(prompts)`` returns one :class:`LLMResult` per prompt, in order: the
answer, or the captured error; nothing a provider does ends the batch. Per prompt:

1. the result cache is looked up for every provider the prompt may go to (a hit makes no call);
2. providers are tried in order (``routing: priority`` keeps the composition's order,
   ``round_robin`` starts each prompt on the next provider, ``adaptive`` puts providers with
   fewer recent failures first: an exponentially weighted failure rate, open breakers last);
   each call goes through that
   provider's circuit breaker (``purgatory``: closed -> open after ``breaker_threshold``
   consecutive retriable failures -> half-open after ``breaker_reset_s`` -> closed on a
   success) and its semaphore, under the overall one;
3. a retriable failure (429, 5xx, timeout, connection, malformed body) fails over at once to
   the next provider whose breaker is closed; on the last provider that could answer (or with
   ``retry_before_failover``) it is retried with exponential backoff and jitter
   (``tenacity``), waiting what ``Retry-After`` asks when the server says so (longer than
   ``max_retry_after_s``: fail over at once), up to ``attempts`` tries; a provider whose
   breaker is open is skipped without a call;
4. hedging (``hedge``: ``adaptive`` by default): a prompt not answered within the hedge delay
   is also sent to the next provider, and again after each further delay up to ``hedge_max``
   hedges; the first good answer wins and the other calls are cancelled. ``adaptive``: the
   delay is ``hedge_factor`` x the ``hedge_quantile`` of the provider's recent latencies
   (:meth:`ProviderGroup.hedge_delay`), ``hedge_idle_share`` of it when no prompt waits for
   a slot (a batch's tail); ``fixed``: ``hedge_after_s`` (``hedge_idle_after_s`` with spare
   slots). Every hedge is a paid call: counted in ``hedges``.

Settings: :class:`~mlx_plugins.llm_providers.settings.LLMGroupSettings` (``settings.llm`` in
the composition). Cache reads and writes run off the event loop (a worker thread).

Counters per provider (calls, failures by kind, retries, cache hits, tokens, estimated cost,
breaker state and transitions) are in :meth:`ProviderGroup.stats`, in Dagster metadata
(:meth:`ProviderGroup.to_metadata`) and in OpenTelemetry metrics (meter ``mlx.llm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlx_plugins.kernel.secrets import redact
from mlx_plugins.llm_providers.base import Completion, LLMError, LLMProvider
from mlx_plugins.llm_providers.cache import ResultCache, cache_key
from mlx_plugins.llm_providers.settings import LLMGroupSettings

BREAKER_STATE_VALUE = {"closed": 0, "half-opened": 1, "opened": 2}
"""The number a breaker state is reported as (metric ``mlx.llm.breaker_state``)."""


GroupSettings = LLMGroupSettings
"""How a group runs: :class:`~mlx_plugins.llm_providers.settings.LLMGroupSettings`
(``settings.llm`` in the composition)."""

LATENCY_SAMPLES = 256
"""Answered-call latencies kept per provider for the adaptive hedge delay."""


class LLMRequest(BaseModel):
    """One prompt of a batch; ``id`` is the caller's (defaults to the position)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    system: str | None = None
    id: str | None = None


class LLMResult(BaseModel):
    """What became of one prompt: ``ok`` with ``text``, or ``error_kind``/``error``.

    ``attempts`` lists every call made, as ``provider:outcome``; ``cached`` says the answer
    came from the cache (no call); ``hedged`` that a second provider was asked.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    id: str
    ok: bool
    text: str | None = None
    provider: str | None = None
    model: str | None = None
    error_kind: str | None = None
    error: str | None = None
    attempts: list[str] = Field(default_factory=list)
    cached: bool = False
    hedged: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


@dataclass
class ProviderStats:
    calls: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    cache_hits: int = 0
    skipped_open: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    breaker_state: str = "closed"
    breaker_transitions: list[str] = field(default_factory=list)
    recent_failure_rate: float = 0.0
    """Exponentially weighted (alpha 0.2) share of failed calls: ``adaptive`` routing."""


class BreakerOpen(Exception):
    """The provider's circuit is open: the call was not made."""


@dataclass
class _Outcome:
    completion: Completion | None = None
    error: LLMError | None = None
    attempts: list[str] = field(default_factory=list)
    cached: bool = False


class ProviderGroup:
    """Providers (by resource name, in failover order) run as one.

    Args:
        providers: name -> provider plugin, in priority order (at least one): a dict's
            insertion order is the failover order. A list of providers is accepted too: each
            is named after its plugin (``openai``, ``anthropic``); two of one plugin are
            refused (pass a dict to name them).
        settings: :class:`GroupSettings`.
        cache_dir: the result cache's folder (``<home>/cache/llm``); None: no cache.
        meter_provider: an OpenTelemetry ``MeterProvider``; None: the global one.
        sleep: the coroutine function retries wait with (``asyncio.sleep``; tests record).

    Raises:
        ValueError: no provider, or a list whose providers' names collide.
        TypeError: something other than providers.
    """

    def __init__(
        self,
        providers: Mapping[str, LLMProvider] | Sequence[LLMProvider],
        settings: GroupSettings | None = None,
        cache_dir: str | Path | None = None,
        *,
        meter_provider: Any = None,
        sleep: Any = None,
    ) -> None:
        if not providers:
            raise ValueError(
                "a provider group needs at least one llm_provider; add one under "
                "plugins.llm_provider in mlx.yaml"
            )
        from purgatory import AsyncCircuitBreakerFactory

        self.providers = _named(providers)
        for name, provider in self.providers.items():
            provider._resource_name = name  # errors name the resource, not just the plugin
        # the last real failure per provider: what a skipped call (open breaker) reports
        self._last_error: dict[str, LLMError] = {}
        self.settings = settings or GroupSettings()
        self.cache = (
            ResultCache(
                cache_dir, ttl_s=self.settings.cache_ttl_s, size_mb=self.settings.cache_size_mb
            )
            if cache_dir is not None and self.settings.cache
            else None
        )
        self.stats: dict[str, ProviderStats] = {n: ProviderStats() for n in self.providers}
        self.hedges = 0
        self._latencies: dict[str, deque[float]] = {
            n: deque(maxlen=LATENCY_SAMPLES) for n in self.providers
        }
        self.hedges_won = 0
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=self.settings.breaker_threshold,
            default_ttl=self.settings.breaker_reset_s,
            exclude=[
                asyncio.CancelledError,  # a cancelled hedge is not the provider's failure
                (LLMError, lambda e: not e.retriable),  # a bad request is the caller's
            ],
        )
        self._breakers.add_listener(self._on_breaker_event)
        self._sleep = sleep or asyncio.sleep
        self._queued = 0  # prompts waiting for an overall slot
        self._otel = _otel_instruments(self, meter_provider)

    # -- public ---------------------------------------------------------------------------
    def run(self, requests: Sequence[LLMRequest | str]) -> list[LLMResult]:
        """Answer every request; one :class:`LLMResult` per request, in order.

        Blocking; runs its own event loop (in a helper thread when called from a running
        loop). Never raises for a provider failure: failures are results.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(requests))
        box: list[list[LLMResult]] = []
        thread = threading.Thread(target=lambda: box.append(asyncio.run(self.arun(requests))))
        thread.start()
        thread.join()
        return box[0]

    async def arun(self, requests: Sequence[LLMRequest | str]) -> list[LLMResult]:
        """Async :meth:`run`."""
        reqs = [r if isinstance(r, LLMRequest) else LLMRequest(prompt=r) for r in requests]
        overall = asyncio.Semaphore(self.settings.max_concurrency)
        per = {n: asyncio.Semaphore(self.settings.provider_concurrency) for n in self.providers}
        # identical prompts in one batch are asked once
        first: dict[tuple[str, str | None], int] = {}
        for i, r in enumerate(reqs):
            first.setdefault((r.prompt, r.system), i)
        unique = sorted(set(first.values()))
        # read once per run: a resource's attribute reads are slow enough to show in a batch
        self._params = {n: p.cache_params() for n, p in self.providers.items()}
        # one worker thread for the cache (one SQLite connection), in arrival order
        self._cache_io = ThreadPoolExecutor(1, thread_name_prefix="mlx-llm-cache")
        try:
            outcomes = await asyncio.gather(*(self._one(i, reqs[i], overall, per) for i in unique))
        finally:
            self._cache_io.shutdown(wait=True)
            for provider in self.providers.values():
                with contextlib.suppress(Exception):  # closing is best effort
                    await provider.aclose()
        by_index = dict(zip(unique, outcomes, strict=True))
        return [
            self._result(i, r, by_index[first[(r.prompt, r.system)]]) for i, r in enumerate(reqs)
        ]

    def breaker_states(self) -> dict[str, str]:
        """Provider -> ``closed`` | ``half-opened`` | ``opened``."""
        return {n: s.breaker_state for n, s in self.stats.items()}

    def summary(self) -> dict[str, Any]:
        """Per-provider counters as plain data (JSON-ready)."""
        return {
            "providers": {
                n: {
                    "calls": s.calls,
                    "ok": s.ok,
                    "failures": dict(s.failures),
                    "retries": s.retries,
                    "cache_hits": s.cache_hits,
                    "skipped_open": s.skipped_open,
                    "input_tokens": s.input_tokens,
                    "output_tokens": s.output_tokens,
                    "cost_usd": round(s.cost_usd, 6),
                    "breaker_state": s.breaker_state,
                    "breaker_transitions": list(s.breaker_transitions),
                    "recent_failure_rate": round(s.recent_failure_rate, 3),
                }
                for n, s in self.stats.items()
            },
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
            "cost_usd": round(sum(s.cost_usd for s in self.stats.values()), 6),
            "input_tokens": sum(s.input_tokens for s in self.stats.values()),
            "output_tokens": sum(s.output_tokens for s in self.stats.values()),
        }

    def to_metadata(self) -> dict[str, Any]:
        """Dagster metadata: totals, plus the per-provider table as JSON."""
        import dagster as dg

        s = self.summary()
        return {
            "llm_cost_usd": dg.MetadataValue.float(s["cost_usd"]),
            "llm_input_tokens": dg.MetadataValue.int(s["input_tokens"]),
            "llm_output_tokens": dg.MetadataValue.int(s["output_tokens"]),
            "llm_providers": dg.MetadataValue.json(s["providers"]),
        }

    def close(self) -> None:
        """Close the cache."""
        if self.cache is not None:
            self.cache.close()

    # -- one prompt -----------------------------------------------------------------------
    def _order(self, index: int) -> list[str]:
        names = list(self.providers)
        if self.settings.routing == "round_robin":
            k = index % len(names)
            names = names[k:] + names[:k]
        elif self.settings.routing == "adaptive":
            rank = {n: i for i, n in enumerate(names)}
            names.sort(
                key=lambda n: (
                    self.stats[n].breaker_state == "opened",
                    round(self.stats[n].recent_failure_rate, 2),
                    rank[n],
                )
            )
        return names

    def _key(self, name: str, req: LLMRequest) -> str:
        return cache_key(self._params[name], req.prompt, req.system)

    async def _one(
        self,
        index: int,
        req: LLMRequest,
        overall: asyncio.Semaphore,
        per: dict[str, asyncio.Semaphore],
    ) -> _Outcome:
        if self.cache is not None:
            # SQLite reads off the event loop: 200 prompts' look-ups would otherwise hold up
            # the answers of the first ones in flight
            keys = [(name, self._key(name, req)) for name in self._order(index)]
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._cache_io, _first_hit, self.cache, keys)
            if found is not None:
                name, hit = found
                self.stats[name].cache_hits += 1
                self._count("mlx.llm.cache_hits", 1, name)
                return _Outcome(completion=hit, cached=True, attempts=[f"{name}:cached"])
        self._queued += 1
        async with overall:
            self._queued -= 1
            order = self._order(index)  # decided when the prompt starts (adaptive routing)
            if self.settings.hedge == "off" or len(order) < 2:
                return await self._chain(order, req, per)
            return await self._hedged(order, req, per)

    def _samples(self, name: str) -> Sequence[float]:
        """``name``'s recent latencies, or every provider's while it has too few of its own."""
        seen: Sequence[float] = self._latencies[name]
        if len(seen) < self.settings.hedge_min_samples:
            seen = [x for samples in self._latencies.values() for x in samples]
        return seen

    def hedge_delay(self, name: str) -> float:
        """Seconds after which a prompt whose call to ``name`` is unanswered is also sent to
        the next provider.

        ``fixed``: ``hedge_after_s``. ``adaptive``: ``hedge_factor`` x the ``hedge_quantile``
        of ``name``'s last latencies (answered calls, and cancelled ones at the time they were
        cancelled, so a provider whose slow calls are always hedged away does not look fast),
        at least ``hedge_min_s``; with fewer than ``hedge_min_samples`` of ``name``'s, every
        provider's latencies; ``hedge_after_s`` until that many are known at all.
        """
        s = self.settings
        seen = self._samples(name)
        if s.hedge == "fixed" or len(seen) < s.hedge_min_samples:
            return s.hedge_after_s
        ordered = sorted(seen)
        q = ordered[min(len(ordered) - 1, int(s.hedge_quantile * len(ordered)))]
        return max(s.hedge_min_s, s.hedge_factor * q)

    async def _hedged(
        self, order: list[str], req: LLMRequest, per: dict[str, asyncio.Semaphore]
    ) -> _Outcome:
        primary = asyncio.create_task(self._chain(order, req, per))
        if await self._answered_before_hedge(primary, order[0]):
            return primary.result()
        after = self.hedge_delay(order[0])
        hedges: set[asyncio.Task[_Outcome]] = set()
        pending: set[asyncio.Task[_Outcome]] = {primary}
        failed: list[_Outcome] = []

        def hedge() -> None:
            self.hedges += 1
            k = (len(hedges) + 1) % len(order)  # the next provider first, then the others
            task = asyncio.create_task(self._chain(order[k:] + order[:k], req, per))
            hedges.add(task)
            pending.add(task)

        hedge()
        while pending:
            # another hedge after another delay while nothing has answered (hedge_max)
            more = len(hedges) < self.settings.hedge_max
            done, still = await asyncio.wait(
                pending, timeout=after if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            pending.intersection_update(still)
            if not done:
                hedge()
                continue
            for task in done:
                outcome = task.result()
                if outcome.completion is not None:
                    for loser in pending:
                        loser.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    if task in hedges:
                        self.hedges_won += 1
                    outcome.attempts = [*(a for f in failed for a in f.attempts), *outcome.attempts]
                    outcome.attempts.append("hedged")
                    return outcome
                failed.append(outcome)
        merged = _Outcome(error=failed[-1].error, attempts=[a for f in failed for a in f.attempts])
        merged.attempts.append("hedged")
        return merged

    async def _answered_before_hedge(self, primary: asyncio.Task[_Outcome], name: str) -> bool:
        """Wait for ``primary`` until the hedge delay (``name``'s) has passed: True when it
        finished first. While too few latencies are known (``adaptive``, a batch's start) the
        delay is re-read every 0.1 s, so a prompt started then uses what its batch-mates'
        answers show as soon as they do."""
        s = self.settings
        start = time.perf_counter()

        async def until(deadline: float) -> bool:
            remaining = deadline - (time.perf_counter() - start)
            if remaining <= 0:
                return False
            done, _ = await asyncio.wait({primary}, timeout=remaining)
            return bool(done)

        while s.hedge == "adaptive" and len(self._samples(name)) < s.hedge_min_samples:
            if time.perf_counter() - start >= s.hedge_after_s:
                return False
            if await until(min(time.perf_counter() - start + 0.1, s.hedge_after_s)):
                return True
        after = self.hedge_delay(name)
        idle = s.hedge_idle_after_s
        if s.hedge == "adaptive" and idle is None:
            idle = s.hedge_idle_share * after
        if idle is not None and idle < after:
            # spare capacity (nothing queued): a hedge costs no prompt its slot, so ask sooner
            if await until(idle):
                return True
            if not self._queued:
                return False
        return await until(after)

    async def _chain(
        self, order: list[str], req: LLMRequest, per: dict[str, asyncio.Semaphore]
    ) -> _Outcome:
        """Providers in ``order`` until one answers; retriable failures fail over."""
        outcome = _Outcome()
        for k, name in enumerate(order):
            # retries only where no other provider could answer at once (its breaker closed)
            others = any(self.stats[n].breaker_state != "opened" for n in order[k + 1 :])
            tries = 1 if others and not self.settings.retry_before_failover else None
            try:
                completion = await self._with_retries(name, req, per[name], outcome.attempts, tries)
            except BreakerOpen:
                self.stats[name].skipped_open += 1
                outcome.attempts.append(f"{name}:circuit_open")
                if outcome.error is None or outcome.error.kind == "circuit_open":
                    # a real failure of this chain stays the result's error
                    outcome.error = self._breaker_error(name)
                continue
            except LLMError as exc:
                outcome.error = exc
                if not exc.retriable:
                    break
                continue
            outcome.completion = completion
            outcome.error = None
            if self.cache is not None:  # written before the prompt is answered: never paid twice
                await asyncio.get_running_loop().run_in_executor(
                    self._cache_io, self.cache.set, self._key(name, req), completion
                )
            return outcome
        return outcome

    def _breaker_error(self, name: str) -> LLMError:
        """The error of a call skipped because ``name``'s breaker is open: the failure that
        opened it (its kind and message), saying the breaker is now open."""
        last = self._last_error.get(name)
        if last is None:
            return LLMError(name, "circuit_open", "circuit breaker is open")
        err = LLMError(
            last.provider,
            last.kind,
            f"{last.detail}; the circuit breaker is now open (call skipped)",
            retry_after=last.retry_after,
            status=last.status,
        )
        err.retriable = last.retriable
        return err

    async def _with_retries(
        self,
        name: str,
        req: LLMRequest,
        sem: asyncio.Semaphore,
        attempts: list[str],
        tries: int | None = None,
    ) -> Completion:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        s = self.settings

        def retriable(exc: BaseException) -> bool:
            return (
                isinstance(exc, LLMError)
                and exc.retriable
                and (exc.retry_after is None or exc.retry_after <= s.max_retry_after_s)
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(tries or s.attempts),
            wait=self._wait,
            retry=retry_if_exception(retriable),
            reraise=True,
            sleep=self._sleep,
        )
        n = 0
        async for attempt in retrying:
            with attempt:
                if n:
                    self.stats[name].retries += 1
                    self._count("mlx.llm.retries", 1, name)
                n += 1
                return await self._call(name, req, sem, attempts)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _wait(self, state: Any) -> float:
        """Seconds before the next try: ``Retry-After`` when given, else exponential + jitter."""
        from tenacity import wait_exponential_jitter

        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, LLMError) and exc.retry_after is not None:
            return float(exc.retry_after)
        s = self.settings
        return float(
            wait_exponential_jitter(
                multiplier=s.backoff_initial_s, max=s.backoff_max_s, jitter=s.jitter_s
            )(state)
        )

    async def _call(
        self, name: str, req: LLMRequest, sem: asyncio.Semaphore, attempts: list[str]
    ) -> Completion:
        from purgatory.domain.model import OpenedState

        stats = self.stats[name]
        try:
            breaker = await self._breakers.get_breaker(name)
            async with breaker, sem:
                stats.calls += 1
                self._count("mlx.llm.calls", 1, name)
                started = time.perf_counter()
                try:
                    completion = await self.providers[name].acomplete(req.prompt, system=req.system)
                except asyncio.CancelledError:  # a hedged-away call took at least this long
                    self._latencies[name].append(time.perf_counter() - started)
                    raise
        except OpenedState:
            raise BreakerOpen(name) from None
        except LLMError as exc:
            if exc.retriable:
                stats.recent_failure_rate = 0.8 * stats.recent_failure_rate + 0.2
            self._last_error[name] = exc
            stats.failures[exc.kind] = stats.failures.get(exc.kind, 0) + 1
            self._count("mlx.llm.failures", 1, name, kind=exc.kind)
            attempts.append(f"{name}:{exc.kind}")
            raise
        except Exception as exc:  # a provider bug is a captured error, not a dead batch
            err = LLMError(name, "other", f"{type(exc).__name__}: {exc}")
            self._last_error[name] = err
            stats.failures["other"] = stats.failures.get("other", 0) + 1
            attempts.append(f"{name}:other")
            raise err from None
        stats.ok += 1
        stats.recent_failure_rate *= 0.8
        self._latencies[name].append(completion.latency_s)
        stats.input_tokens += completion.input_tokens
        stats.output_tokens += completion.output_tokens
        stats.cost_usd += completion.cost_usd
        self._count("mlx.llm.tokens", completion.input_tokens, name, direction="input")
        self._count("mlx.llm.tokens", completion.output_tokens, name, direction="output")
        self._count("mlx.llm.cost_usd", completion.cost_usd, name)
        attempts.append(f"{name}:ok")
        return completion

    # -- results and metrics --------------------------------------------------------------
    def _result(self, index: int, req: LLMRequest, outcome: _Outcome) -> LLMResult:
        rid = req.id if req.id is not None else str(index)
        hedged = "hedged" in outcome.attempts
        attempts = [a for a in outcome.attempts if a != "hedged"]
        c = outcome.completion
        if c is not None:
            return LLMResult(
                index=index,
                id=rid,
                ok=True,
                text=c.text,
                provider=c.provider,
                model=c.model,
                attempts=attempts,
                cached=outcome.cached,
                hedged=hedged,
                input_tokens=0 if outcome.cached else c.input_tokens,
                output_tokens=0 if outcome.cached else c.output_tokens,
                cost_usd=0.0 if outcome.cached else c.cost_usd,
                latency_s=c.latency_s,
            )
        err = outcome.error or LLMError("group", "other", "no provider answered")
        return LLMResult(
            index=index,
            id=rid,
            ok=False,
            error_kind=err.kind,
            error=redact(str(err)),
            attempts=attempts,
            hedged=hedged,
        )

    def _on_breaker_event(self, name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed" and name in self.stats:
            self.stats[name].breaker_state = event.state
            self.stats[name].breaker_transitions.append(event.state)
            self._count("mlx.llm.breaker_transitions", 1, name, state=event.state)

    def _count(self, metric: str, value: float, provider: str, **attrs: str) -> None:
        inst = self._otel.get(metric)
        if inst is not None and value:
            inst.add(value, {"provider": provider, **attrs})


def _named(providers: Any) -> dict[str, LLMProvider]:
    """``providers`` (a ``{name: provider}`` mapping or a sequence of providers) as a dict in
    priority order; a sequence's names are each provider's plugin name (``openai``)."""
    usage = (
        "ProviderGroup takes {name: provider} (a dict, in failover order) or a list of "
        "llm_provider plugins (OpenAIProvider, AnthropicProvider, ...)"
    )
    if isinstance(providers, Mapping):
        items = list(providers.items())
    elif isinstance(providers, Sequence) and not isinstance(providers, (str, bytes)):
        items = [
            (type(p).metadata.name if isinstance(p, LLMProvider) else None, p) for p in providers
        ]
    else:
        raise TypeError(f"{usage}; got {type(providers).__name__}")
    bad = [f"{type(p).__name__}" for _, p in items if not isinstance(p, LLMProvider)]
    if bad:
        raise TypeError(f"{usage}; got {', '.join(bad)} among them")
    named: dict[str, LLMProvider] = {}
    for name, provider in items:
        if name in named:
            raise ValueError(
                f"two providers are named {name!r} (the plugin's name); pass a dict to name "
                f"them, e.g. ProviderGroup({{'{name}_a': first, '{name}_b': second}})"
            )
        named[str(name)] = provider
    return named


def _first_hit(cache: ResultCache, keys: list[tuple[str, str]]) -> tuple[str, Completion] | None:
    """The first ``(provider, completion)`` of ``keys`` (provider, cache key) in ``cache``."""
    for name, key in keys:
        hit = cache.get(key)
        if hit is not None:
            return name, hit
    return None


def _otel_instruments(group: ProviderGroup, meter_provider: Any = None) -> dict[str, Any]:
    """OpenTelemetry counters and the breaker-state gauge (no-ops without an SDK set up)."""
    from opentelemetry import metrics

    meter = metrics.get_meter("mlx.llm", meter_provider=meter_provider)
    ref = weakref.ref(group)  # the callback must not keep a finished group alive

    def states(_options: Any) -> Any:
        live = ref()
        if live is None:
            return
        for name, stats in live.stats.items():
            yield metrics.Observation(
                BREAKER_STATE_VALUE.get(stats.breaker_state, 0), {"provider": name}
            )

    meter.create_observable_gauge(
        "mlx.llm.breaker_state",
        callbacks=[states],
        description="Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
    )
    return {
        "mlx.llm.calls": meter.create_counter("mlx.llm.calls", description="Calls made."),
        "mlx.llm.failures": meter.create_counter("mlx.llm.failures", description="Failed calls."),
        "mlx.llm.retries": meter.create_counter("mlx.llm.retries", description="Retries."),
        "mlx.llm.cache_hits": meter.create_counter("mlx.llm.cache_hits", description="Hits."),
        "mlx.llm.tokens": meter.create_counter("mlx.llm.tokens", unit="{token}"),
        "mlx.llm.cost_usd": meter.create_counter("mlx.llm.cost_usd", unit="USD"),
        "mlx.llm.breaker_transitions": meter.create_counter("mlx.llm.breaker_transitions"),
    }
