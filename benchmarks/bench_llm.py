"""The provider group under failure: 200 prompts over two providers, one failing half its
calls, the other slow on 10%, through the official SDKs against loopback servers.

- ``openai`` (OpenAI Chat Completions wire format): every other call is an immediate HTTP 500;
  the others answer after ``--latency`` seconds;
- ``anthropic`` (Anthropic Messages, streamed): answers after ``--latency`` seconds, one call in
  ten after ``--slow`` seconds.

The ideal is ``prompts / concurrency x median latency`` (the median of the answered calls'
latency as the client measured it, in this run). Goals: wall <= 1.25x the ideal, zero lost
prompts, and a rerun (a new group on the same cache folder, as a later run would be) that
makes zero paid calls.

    ./dev bench llm [--prompts 200] [--concurrency 16] [--latency 0.5] [--slow 3.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import row

from mlx_plugins.llm_providers.anthropic_provider import AnthropicProvider
from mlx_plugins.llm_providers.group import GroupSettings, ProviderGroup
from mlx_plugins.llm_providers.loopback import Fault, LoopbackLLMServer
from mlx_plugins.llm_providers.openai_provider import OpenAIProvider


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {sys.platform}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds of a normal answer")
    ap.add_argument("--slow", type=float, default=3.0, help="seconds of a slow answer")
    ap.add_argument("--fail-every", type=int, default=2, help="openai fails 1 call in N (0: never)")
    ap.add_argument("--slow-every", type=int, default=10, help="anthropic slow 1 in N (0: never)")
    ap.add_argument("--hedge-after", type=float, default=None, help="default: 2 x latency")
    args = ap.parse_args()

    lock = threading.Lock()
    flips = {"a": 0}

    def half_fail(i: int, prompt: str) -> Fault:
        with lock:
            flips["a"] += 1
            n = flips["a"]
        if args.fail_every and n % args.fail_every == 0:
            return Fault("server_error")
        return Fault("slow", delay_s=args.latency)

    def slow_tenth(i: int, prompt: str) -> Fault:
        slow = args.slow_every and i % args.slow_every == args.slow_every - 1
        return Fault("slow", delay_s=args.slow if slow else args.latency)

    settings = GroupSettings(
        max_concurrency=args.concurrency,
        per_provider_concurrency=args.concurrency,
        attempts=1,  # a failed call fails over at once; the other provider is the retry
        routing="adaptive",
        hedge_after_s=args.hedge_after or 2 * args.latency,
        breaker_threshold=5,
    )
    prompts = [f"summarize drift incident number {i}" for i in range(args.prompts)]
    with (
        LoopbackLLMServer("openai", script=half_fail) as a,
        LoopbackLLMServer("anthropic", script=slow_tenth) as b,
        tempfile.TemporaryDirectory() as cache_dir,
    ):
        common = {"api_key": "sk-bench", "timeout_s": 30.0, "input_price_per_mtok": 3.0}
        providers = {
            "openai": OpenAIProvider(model="gpt-bench", base_url=a.base_url, **common),
            "anthropic": AnthropicProvider(
                model="claude-bench", base_url=b.base_url, stream=True, **common
            ),
        }
        # warm-up outside the timing (SDK imports, first connections), no cache
        ProviderGroup(providers, settings).run(["warm-up a", "warm-up b"])
        a.served = b.served = 0
        a.requests.clear()
        b.requests.clear()

        group = ProviderGroup(providers, settings, cache_dir=cache_dir)
        start = time.perf_counter()
        results = group.run(prompts)
        wall = time.perf_counter() - start
        paid_first = a.served + b.served
        group.close()

        rerun_group = ProviderGroup(providers, settings, cache_dir=cache_dir)
        start = time.perf_counter()
        rerun = rerun_group.run(prompts)
        rerun_wall = time.perf_counter() - start
        paid_rerun = a.served + b.served - paid_first
        rerun_group.close()

    answered = [r for r in results if r.ok]
    median_latency = statistics.median(r.latency_s for r in answered)
    ideal = len(prompts) / args.concurrency * median_latency
    lost = len(prompts) - len(answered)
    summary = group.summary()
    print(f"machine: {machine()}")
    print(
        f"prompts {len(prompts)}, concurrency {args.concurrency}, latency {args.latency}s, "
        f"slow {args.slow}s on 10% of anthropic, openai failing 50%"
    )
    print(row("measure", "value", widths=(44, 16)))
    print(row("median answered-call latency (s)", f"{median_latency:.3f}", widths=(44, 16)))
    print(row("ideal: prompts / concurrency x median (s)", f"{ideal:.2f}", widths=(44, 16)))
    print(row("wall (s)", f"{wall:.2f}", widths=(44, 16)))
    print(row("lost prompts", lost, widths=(44, 16)))
    for name, s in summary["providers"].items():
        print(
            row(
                f"{name}: calls / ok / failures",
                f"{s['calls']} / {s['ok']} / {sum(s['failures'].values())}",
                widths=(44, 16),
            )
        )
    print(
        row(
            "hedges (won by the hedge)",
            f"{summary['hedges']} ({summary['hedges_won']})",
            widths=(44, 16),
        )
    )
    print(row("paid calls, first run", paid_first, widths=(44, 16)))
    print(row("paid calls, rerun (cache)", paid_rerun, widths=(44, 16)))
    print(row("rerun wall (s), all cached", f"{rerun_wall:.3f}", widths=(44, 16)))
    print(row("estimated cost, first run (USD)", f"{summary['cost_usd']:.6f}", widths=(44, 16)))
    ratio = wall / ideal
    ok = ratio <= 1.25 and lost == 0 and paid_rerun == 0 and all(r.cached for r in rerun)
    print(
        f"ratio wall/ideal: {ratio:.2f}x (goal <= 1.25x); "
        f"lost {lost}; duplicate paid calls on rerun {paid_rerun}: {'PASS' if ok else 'FAIL'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
