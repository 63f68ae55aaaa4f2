"""Benchmark: the drift detector's compiled sort (``_radix.finite_sort``) against ``np.sort``.

What the one-pair ``compare`` spends most of its time on (docs/drift.md, "How it is
computed"): sorting each side's finite float64 values. This times, in one process and on the
same arrays, for each size and distribution:

* ``np.sort`` of the values (the baseline; what the numpy path does, after dropping NaN/inf);
* ``_radix.finite_sort`` (drop NaN/inf and sort, into preallocated buffers, as the detector's
  workspace gives it), checked equal to ``np.sort``;

each the best of ``--repeat`` runs, and prints milliseconds, nanoseconds a value and the ratio.
Above ``_radix.IN_CACHE`` values the sort partitions by the most significant bits first
(the "large" path); below, it runs least-significant-digit passes over the whole array.

    .venv/bin/python benchmarks/bench_radix.py
    .venv/bin/python benchmarks/bench_radix.py --sizes 1000000 5000000 --repeat 9
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from _common import load, machine


def distributions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The kinds of numeric column ``benchmarks/bench_drift.py`` generates, plus spread bits."""
    rng = np.random.default_rng(seed)
    return {
        "normal(10, 2)": rng.normal(10.0, 2.0, n),
        "lognormal(0, 0.7)": rng.lognormal(0.0, 0.7, n),
        "gamma(2, 3)": rng.gamma(2.0, 3.0, n),
        "integers 0-999": rng.integers(0, 1000, n).astype(np.float64),
        "random bits (no NaN)": rng.integers(0, 2**62, n, dtype=np.uint64).view(np.float64),
    }


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    from mlx_plugins.drift_detectors import _radix

    print(f"machine: {machine()}; load average before: {load()}", flush=True)
    warm = np.random.default_rng(1).normal(size=_radix.IN_CACHE + 10)
    _radix.finite_sort(warm, np.empty(len(warm)), np.empty(len(warm)))  # load / compile
    print(
        f"{'values':>10}  {'distribution':<22} {'np.sort ms':>10} {'ours ms':>8} "
        f"{'ours ns/value':>13} {'np.sort / ours':>14}"
    )
    for n in args.sizes:
        out, scratch = np.empty(n), np.empty(n)
        for name, values in distributions(n).items():
            k = _radix.finite_sort(values, out, scratch)
            expected = np.sort(values)
            if k != n or not np.array_equal(out[:k], expected):
                raise SystemExit(f"finite_sort differs from np.sort on {name} ({n:,} values)")
            base = best_ms(lambda v=values: np.sort(v), args.repeat)
            ours = best_ms(
                lambda v=values, o=out, s=scratch: _radix.finite_sort(v, o, s), args.repeat
            )
            path = "large" if n > _radix.IN_CACHE else "lsd"
            print(
                f"{n:>10,}  {name:<22} {base:>10.1f} {ours:>8.1f} {ours * 1e6 / n:>13.1f} "
                f"{base / ours:>13.1f}x  ({path} path)",
                flush=True,
            )
    print(f"machine: {machine()}; load average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
