"""Summarise a ``MLX_GC_LOG`` written by ``sitecustomize.py``: per process, its full collections
before and after it froze its heap (``gc.freeze``), how many took 50 ms or more, the longest.

    .venv/bin/python benchmarks/gc_probe/summary.py /tmp/gc.log
"""

from __future__ import annotations

import collections
import sys


def main(path: str) -> None:
    full: dict[tuple[str, str, bool], list[float]] = collections.defaultdict(list)
    with open(path) as log:
        for line in log:
            _, pid, gen, ms, frozen, *who = line.split()
            if gen == "gen=2":
                full[(" ".join(who), pid, frozen != "frozen=0")].append(float(ms[:-2]))
    for (who, pid, frozen), pauses in sorted(full.items()):
        slow = sum(p >= 50 for p in pauses)
        print(
            f"{who[:60]:60} {pid:10} {'frozen' if frozen else 'not frozen':10} "
            f"full collections {len(pauses):3}, >= 50 ms {slow:3}, longest {max(pauses):6.1f} ms"
        )


if __name__ == "__main__":
    main(sys.argv[1])
