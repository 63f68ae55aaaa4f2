"""The provider group against loopback servers: failover, retries honouring Retry-After,
breaker transitions as metrics, hedging, errors captured as results, the persistent cache."""

from __future__ import annotations

import logging

import pytest

from mlx_plugins.llm_providers.base import Completion
from mlx_plugins.llm_providers.cache import ResultCache, cache_key
from mlx_plugins.llm_providers.group import GroupSettings, LLMRequest, ProviderGroup
from mlx_plugins.llm_providers.loopback import Fault
from tests.llm.conftest import SECRET, provider_for

FAST = {"backoff_initial_s": 0.0, "backoff_max_s": 0.0, "jitter_s": 0.0, "hedge": "off"}


class Sleeps:
    """Records what retries wait, without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def group(*servers, cache_dir=None, sleep=None, meter_provider=None, **settings):
    providers = {s.wire: provider_for(s) for s in servers}
    return ProviderGroup(
        providers,
        GroupSettings(**{**FAST, **settings}),
        cache_dir=cache_dir,
        sleep=sleep or Sleeps(),
        meter_provider=meter_provider,
    )


def test_retriable_failure_fails_over_after_its_attempts(servers):
    a = servers("openai", script=lambda i, p: Fault("server_error"))
    b = servers("anthropic")
    [r] = group(a, b, attempts=2, retry_before_failover=True).run(["q"])
    assert r.ok and r.provider == "anthropic"
    assert r.attempts == ["openai:server_error", "openai:server_error", "anthropic:ok"]
    assert a.calls == 2 and b.calls == 1


def test_no_retry_while_another_provider_can_answer_retries_on_the_last(servers):
    """By default a failed call goes to the next healthy provider at once (no backoff wait);
    retries are spent on the last provider that could answer."""
    a = servers("openai", script=lambda i, p: Fault("server_error"))
    b = servers("anthropic", script=lambda i, p: Fault("server_error") if i == 0 else Fault())
    sleeps = Sleeps()
    [r] = group(a, b, attempts=3, sleep=sleeps, routing="priority").run(["q"])
    assert r.ok and r.provider == "anthropic"
    assert r.attempts == ["openai:server_error", "anthropic:server_error", "anthropic:ok"]
    assert len(sleeps.waits) == 1  # the one retry, on anthropic


def test_no_retry_skips_only_for_a_provider_whose_breaker_is_closed(servers):
    """With the other provider's breaker open there is nobody to fail over to: retry."""
    a = servers("openai", script=lambda i, p: Fault("server_error") if i == 4 else Fault())
    b = servers("anthropic", script=lambda i, p: Fault("server_error"))
    g = group(a, b, attempts=3, breaker_threshold=2, max_concurrency=1, routing="round_robin")
    first = g.run(["p1", "p2", "p3", "p4"])  # p2, p4 start on anthropic: it fails twice, opens
    assert first[3].attempts == ["anthropic:server_error", "openai:ok"]
    assert g.breaker_states() == {"openai": "closed", "anthropic": "opened"}
    [r] = g.run(["p3"])
    assert r.ok and r.provider == "openai"
    assert r.attempts == ["openai:server_error", "openai:ok"]  # retried: anthropic is open


def test_non_retriable_error_is_a_result_without_failover(servers):
    a = servers("openai", script=lambda i, p: Fault("bad_request"))
    b = servers("anthropic")
    [r] = group(a, b, attempts=3).run(["q"])
    assert not r.ok and r.error_kind == "bad_request" and "HTTP 400" in (r.error or "")
    assert a.calls == 1 and b.calls == 0


def test_every_failure_shape_is_captured_and_the_batch_completes(servers, caplog):
    kinds = ["server_error", "rate_limited", "timeout", "malformed", "bad_request", "ok"]
    faults = {k: Fault(k, delay_s=0.6 if k == "timeout" else 0.0, retry_after=0) for k in kinds}
    a = servers("openai", script=lambda i, p: faults[p])
    g = ProviderGroup({"openai": provider_for(a, timeout_s=0.2)}, GroupSettings(attempts=1, **FAST))
    with caplog.at_level(logging.DEBUG):
        results = g.run(kinds)
    assert [r.ok for r in results] == [False] * 5 + [True]
    assert [r.error_kind for r in results[:5]] == [
        "server_error",
        "rate_limited",
        "timeout",
        "malformed",
        "bad_request",
    ]
    everything = "".join(r.model_dump_json() for r in results) + caplog.text
    assert SECRET not in everything
    assert SECRET not in str(g.summary())


def test_retry_waits_what_retry_after_says_else_backs_off_with_jitter(servers):
    a = servers("openai", faults=[Fault("rate_limited", retry_after=2.5), Fault("server_error")])
    sleeps = Sleeps()
    g = group(a, sleep=sleeps, attempts=3, backoff_initial_s=0.5, backoff_max_s=4, jitter_s=0.25)
    [r] = g.run(["q"])
    assert r.ok and a.calls == 3
    assert sleeps.waits[0] == 2.5  # Retry-After, not the backoff
    assert 1.0 <= sleeps.waits[1] <= 1.25  # second retry: 0.5 * 2 plus jitter in [0, 0.25]
    assert g.summary()["providers"]["openai"]["retries"] == 2


def test_retry_after_longer_than_allowed_fails_over_at_once(servers):
    a = servers("openai", faults=[Fault("rate_limited", retry_after=120)])
    b = servers("anthropic")
    sleeps = Sleeps()
    [r] = group(a, b, sleep=sleeps, attempts=3, max_retry_after_s=10).run(["q"])
    assert r.ok and r.provider == "anthropic"
    assert sleeps.waits == [] and a.calls == 1


class Clock:
    """A library's clock (its module's ``time``: ``time.time()``), moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_breaker_opens_skips_then_half_opens_and_closes_visible_as_metrics(servers, monkeypatch):
    import purgatory.domain.model as breaker_model
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    healthy = {"on": False}
    a = servers("openai", script=lambda i, p: Fault() if healthy["on"] else Fault("server_error"))
    b = servers("anthropic")
    clock = Clock()
    monkeypatch.setattr(breaker_model, "time", clock)
    reader = InMemoryMetricReader()
    g = group(
        a,
        b,
        attempts=1,
        breaker_threshold=2,
        breaker_reset_s=30,
        max_concurrency=1,
        routing="priority",
        meter_provider=MeterProvider(metric_readers=[reader]),
    )

    def gauge() -> dict[str, int]:
        out = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "mlx.llm.breaker_state":
                        for point in m.data.data_points:
                            out[point.attributes["provider"]] = point.value
        return out

    first = g.run(["p1", "p2", "p3"])
    assert all(r.ok and r.provider == "anthropic" for r in first)
    assert a.calls == 2  # the third prompt found the circuit open and made no call
    assert first[2].attempts == ["openai:circuit_open", "anthropic:ok"]
    assert g.breaker_states()["openai"] == "opened"
    assert gauge() == {"openai": 2, "anthropic": 0}

    clock.now += 31  # past breaker_reset_s: the next call is the half-open probe
    healthy["on"] = True
    [r] = g.run(["p4"])
    assert r.ok and r.provider == "openai"
    stats = g.summary()["providers"]["openai"]
    assert stats["breaker_transitions"] == ["opened", "half-opened", "closed"]
    assert stats["skipped_open"] == 1
    assert gauge()["openai"] == 0


def test_hedge_answers_from_the_second_provider_and_cancels_the_slow_one(servers):
    a = servers("openai", script=lambda i, p: Fault("slow", delay_s=3.0))
    b = servers("anthropic")
    g = group(a, b, hedge="fixed", hedge_after_s=0.05, hedge_max=1)
    [r] = g.run(["q"])
    assert r.ok and r.provider == "anthropic" and r.hedged
    assert a.served == 0  # the slow call was cancelled before it was answered
    assert g.hedges == 1 and g.hedges_won == 1


def test_adaptive_hedge_delay_follows_the_observed_latency(servers):
    """hedge_after_s (30 s) only until latencies are known; then a call far slower than the
    provider's usual answers is hedged."""
    a = servers(
        "openai", script=lambda i, p: Fault("slow", delay_s=3.0) if p == "slow" else Fault()
    )
    b = servers("anthropic")
    g = group(
        a,
        b,
        hedge="adaptive",
        hedge_after_s=30.0,
        hedge_min_samples=5,
        hedge_max=1,
        routing="priority",
    )
    assert g.hedge_delay("openai") == 30.0  # nothing observed yet
    first = g.run([f"p{i}" for i in range(6)])
    assert all(r.provider == "openai" and not r.hedged for r in first)
    assert g.hedge_delay("openai") < 1.0  # a few loopback answers: well under a second
    [r] = g.run(["slow"])
    assert r.ok and r.hedged and r.provider == "anthropic"
    assert g.hedges == 1 and a.served == 6


def test_a_prompt_started_before_latencies_were_known_is_hedged_once_they_are(servers):
    """The delay is re-read while a prompt waits: the slow prompt started with nothing
    observed (hedge_after_s 30 s) and is hedged as soon as its batch-mates' answers show
    what usual is."""
    a = servers(
        "openai", script=lambda i, p: Fault("slow", delay_s=10.0) if p == "slow" else Fault()
    )
    b = servers("anthropic")
    g = group(a, b, hedge="adaptive", hedge_after_s=30.0, hedge_min_samples=3, routing="priority")
    results = g.run(["slow", "p1", "p2", "p3"])  # all four start at once
    assert results[0].ok and results[0].hedged and results[0].provider == "anthropic"
    assert not any(r.hedged for r in results[1:])
    assert a.served == 3


def test_a_hedge_that_is_slow_too_is_hedged_again_up_to_hedge_max(servers):
    asked: list[str] = []

    def first_q_slow(i: int, prompt: str) -> Fault:
        asked.append(prompt)
        slow = prompt == "q" and asked.count("q") == 1
        return Fault("slow", delay_s=10.0) if slow else Fault()

    a = servers("openai", script=first_q_slow)
    b = servers(
        "anthropic", script=lambda i, p: Fault("slow", delay_s=10.0) if p == "q" else Fault()
    )
    g = group(a, b, hedge="fixed", hedge_after_s=0.2, hedge_max=2, routing="round_robin")
    g.run(["warm a", "warm b"])  # both SDKs imported: no cold start inside the timings below
    [r] = g.run(["q"])
    assert r.ok and r.hedged and r.provider == "openai"  # the second hedge, a fresh call
    assert g.hedges == 2 and g.hedges_won == 1
    assert b.served == 1 and a.served == 2  # "warm" each, and the winner; slow ones cancelled


def test_cache_hit_makes_no_call_even_in_a_new_group_and_is_not_billed(servers, tmp_path):
    a = servers("openai", script=lambda i, p: Fault("server_error") if i % 2 else Fault())
    b = servers("anthropic")
    prompts = [f"prompt {i}" for i in range(8)]
    g1 = group(a, b, cache_dir=tmp_path, attempts=1)
    first = g1.run(prompts)
    assert all(r.ok for r in first)
    assert g1.summary()["cost_usd"] > 0
    calls = (a.calls, b.calls)
    g1.close()

    g2 = group(a, b, cache_dir=tmp_path, attempts=1)  # a later run, same home
    second = g2.run(prompts)
    assert (a.calls, b.calls) == calls  # nothing asked again, not even the provider that failed
    assert all(r.cached and r.cost_usd == 0 for r in second)
    assert [r.text for r in second] == [r.text for r in first]
    assert g2.summary()["cost_usd"] == 0
    assert sum(s["cache_hits"] for s in g2.summary()["providers"].values()) == 8


def test_identical_prompts_in_one_batch_are_asked_once(servers):
    a = servers("openai")
    results = group(a).run([LLMRequest(prompt="same", id="x"), "same", "other"])
    assert a.calls == 2
    assert [r.id for r in results] == ["x", "1", "2"]
    assert results[0].text == results[1].text


def test_round_robin_spreads_first_calls_over_providers(servers):
    a, b = servers("openai"), servers("anthropic")
    results = group(a, b, routing="round_robin").run([f"p{i}" for i in range(6)])
    assert [r.provider for r in results] == ["openai", "anthropic"] * 3
    assert (a.calls, b.calls) == (3, 3)


def test_cache_expires_after_its_ttl_and_stays_under_its_size(tmp_path, monkeypatch):
    import diskcache.core

    clock = Clock()
    monkeypatch.setattr(diskcache.core, "time", clock)
    c = Completion(provider="openai", model="m", text="x" * 10_000)
    ttl = ResultCache(tmp_path / "ttl", ttl_s=60, size_mb=1)
    ttl.set("k", c)
    clock.now += 59
    assert ttl.get("k") == c
    clock.now += 2
    assert ttl.get("k") is None

    small = ResultCache(tmp_path / "small", ttl_s=None, size_mb=0.25)
    for i in range(200):  # about 2 MB of answers into a 0.25 MiB store
        small.set(str(i), c)
    assert len(small) < 200
    assert small.get("199") == c  # the newest stay


def test_cache_key_covers_provider_model_parameters_and_prompt():
    base = {"provider": "openai", "model": "m", "temperature": 0.0}
    k = cache_key(base, "p")
    assert k == cache_key(dict(base), "p")
    assert k != cache_key({**base, "model": "m2"}, "p")
    assert k != cache_key({**base, "provider": "anthropic"}, "p")
    assert k != cache_key({**base, "temperature": 0.5}, "p")
    assert k != cache_key(base, "p2")
    assert k != cache_key(base, "p", system="s")


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="max_concurrency"):
        GroupSettings(max_concurrency=0)
    with pytest.raises(ValueError, match="needs at least one llm_provider"):
        ProviderGroup({})


def test_adaptive_routing_sends_new_prompts_to_the_provider_that_fails_less(servers):
    a = servers("openai", script=lambda i, p: Fault("server_error"))
    b = servers("anthropic")
    g = group(a, b, routing="adaptive", attempts=1, max_concurrency=1, breaker_threshold=50)
    results = g.run([f"p{i}" for i in range(6)])
    assert all(r.ok and r.provider == "anthropic" for r in results)
    assert results[0].attempts == ["openai:server_error", "anthropic:ok"]
    assert all(r.attempts == ["anthropic:ok"] for r in results[1:])
    assert a.calls == 1


def test_the_breaker_gauge_does_not_keep_a_finished_group_alive(servers):
    import gc
    import weakref

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    g = group(servers("openai"), meter_provider=MeterProvider(metric_readers=[reader]))
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None
    reader.get_metrics_data()  # the callback of a collected group reports nothing, no error
