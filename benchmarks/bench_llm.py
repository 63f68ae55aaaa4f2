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
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, machine, row

from mlx_plugins.llm_providers.anthropic_provider import AnthropicProvider
from mlx_plugins.llm_providers.group import GroupSettings, ProviderGroup
from mlx_plugins.llm_providers.loopback import Fault, LoopbackLLMServer
from mlx_plugins.llm_providers.openai_provider import OpenAIProvider


class Scripts:
    """The two providers' behaviour, per request (picklable: runs in the server process)."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args, self.n = name, args, 0
        self.lock = threading.Lock()

    def __call__(self, i: int, prompt: str) -> Fault:
        a = self.args
        if self.name == "half_fail":  # every fail_every-th call fails at once
            with self.lock:
                self.n += 1
                n = self.n
            if a.fail_every and n % a.fail_every == 0:
                return Fault("server_error")
            return Fault("slow", delay_s=a.latency)
        slow = a.slow_every and i % a.slow_every == a.slow_every - 1
        return Fault("slow", delay_s=a.slow if slow else a.latency)


def _serve(wire: str, script: str, args: argparse.Namespace, conn: Connection) -> None:
    server = LoopbackLLMServer(wire, script=Scripts(script, args)).start()  # type: ignore[arg-type]
    conn.send(server.base_url)
    while True:
        cmd = conn.recv()
        if cmd == "calls":
            conn.send(server.calls)
        else:
            server.stop()
            conn.send(True)
            return


class ServerProcess:
    """A loopback server in a child process."""

    def __init__(self, wire: str, script: str, args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(wire, script, args, child), daemon=True)

    def __enter__(self) -> ServerProcess:
        self.proc.start()
        self.base_url = self.conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.send("stop")
        self.conn.recv()
        self.proc.join(5)

    def calls(self) -> int:
        """Requests the server received (every one may be billed)."""
        self.conn.send("calls")
        return int(self.conn.recv())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds of a normal answer")
    ap.add_argument("--slow", type=float, default=3.0, help="seconds of a slow answer")
    ap.add_argument("--fail-every", type=int, default=2, help="openai fails 1 call in N (0: never)")
    ap.add_argument("--slow-every", type=int, default=10, help="anthropic slow 1 in N (0: never)")
    ap.add_argument(
        "--hedge",
        choices=["adaptive", "fixed", "off"],
        default=None,
        help="hedge mode (default: the group's default, adaptive)",
    )
    ap.add_argument("--hedge-after", type=float, default=None, help="fixed delay, seconds")
    ap.add_argument("--hedge-idle-after", type=float, default=None, help="fixed, spare slots")
    ap.add_argument("--repeats", type=int, default=3, help="runs; the median ratio is reported")
    args = ap.parse_args()

    # The group's default policy (what settings.llm gives when left out), but for the
    # concurrency and any hedge option given on the command line.
    overrides: dict[str, object] = {"max_concurrency": args.concurrency}
    for key, value in (
        ("hedge", args.hedge),
        ("hedge_after_s", args.hedge_after),
        ("hedge_idle_after_s", args.hedge_idle_after),
    ):
        if value is not None:
            overrides[key] = value
    settings = GroupSettings(**overrides)
    prompts = [f"summarize drift incident number {i}" for i in range(args.prompts)]
    print(f"machine: {machine()}; load average before: {load()}")
    print(
        f"prompts {len(prompts)}, concurrency {args.concurrency}, latency {args.latency}s; "
        f"openai fails 1 call in {args.fail_every}; anthropic (streamed) takes {args.slow}s on "
        f"1 call in {args.slow_every}; group settings (defaults but concurrency): "
        f"{settings.model_dump()}"
    )
    widths = (6, 10, 10, 8, 10, 6, 8, 14, 12, 12)
    print(
        row(
            "run",
            "ideal s",
            "wall s",
            "ratio",
            "client CPU s",
            "lost",
            "calls",
            "hedges (won)",
            "rerun calls",
            "cost USD",
            widths=widths,
        )
    )
    ratios: list[float] = []
    failed = False
    for run in range(1, args.repeats + 1):
        # The servers run in child processes, so their threads do not compete with the
        # client's event loop for this interpreter's GIL.
        with (
            ServerProcess("openai", "half_fail", args) as a,
            ServerProcess("anthropic", "slow_tenth", args) as b,
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
            group = ProviderGroup(providers, settings, cache_dir=cache_dir)
            before = a.calls() + b.calls()
            start, cpu_start = time.perf_counter(), time.process_time()
            results = group.run(prompts)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            calls = a.calls() + b.calls() - before
            group.close()
            # a later run (a new group on the same cache): every call it makes would be paid
            rerun_group = ProviderGroup(providers, settings, cache_dir=cache_dir)
            before = a.calls() + b.calls()
            rerun = rerun_group.run(prompts)
            rerun_calls = a.calls() + b.calls() - before
            rerun_group.close()
        answered = [r for r in results if r.ok]
        lost = len(prompts) - len(answered)
        median_latency = statistics.median(r.latency_s for r in answered)
        ideal = len(prompts) / args.concurrency * median_latency
        summary = group.summary()
        delays = {n: round(group.hedge_delay(n), 3) for n in providers}
        ratios.append(wall / ideal)
        failed |= lost > 0 or rerun_calls > 0 or not all(r.cached and r.ok for r in rerun)
        print(
            row(
                run,
                f"{ideal:.2f}",
                f"{wall:.2f}",
                f"{wall / ideal:.2f}x",
                f"{cpu:.2f}",
                lost,
                calls,
                f"{summary['hedges']} ({summary['hedges_won']})",
                rerun_calls,
                f"{summary['cost_usd']:.6f}",
                widths=widths,
            )
            + f"  hedge delay at the end {delays}"
        )
    ratio = statistics.median(ratios)
    print(f"machine: {machine()}; load average after: {load()}")
    ok = ratio <= 1.25 and not failed
    print(
        f"ratio wall/ideal (median of {args.repeats}): {ratio:.2f}x (goal <= 1.25x); lost prompts "
        f"and rerun calls above (goal 0): {'PASS' if ok else 'FAIL'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
