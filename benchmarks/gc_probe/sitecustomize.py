"""Logs every Python process's garbage-collection pauses (docs/serving.md, "Why the direct
tails were wrong"): with this folder on ``PYTHONPATH`` and ``MLX_GC_LOG`` set, each full
(generation 2) collection, and any other one over 10 ms, appends one line to that file:
``<unix time> pid=<pid> gen=<generation> <ms>ms frozen=<objects frozen out of the collector>
<the served module:app, else argv>`` (no object count: counting them would itself pause the
process). Diagnostic only; the servers inherit both variables from the benchmark (``bentoml
serve`` passes its environment to its workers). Summary: ``benchmarks/gc_probe/summary.py``."""

import gc
import os
import sys
import time

_LOG = os.environ.get("MLX_GC_LOG")
_started = [0.0]
# the served app of a server's worker ("module:Service"), else the script
_WHO = next((a for a in sys.argv if ":" in a and "/" not in a), " ".join(sys.argv)[:80])


def _pause(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _started[0]) * 1000
    if info["generation"] == 2 or ms > 10:
        with open(_LOG, "a") as out:  # type: ignore[arg-type]
            out.write(
                f"{time.time():.3f} pid={os.getpid()} gen={info['generation']} {ms:.1f}ms "
                f"frozen={gc.get_freeze_count()} {_WHO}\n"
            )


if _LOG:
    gc.callbacks.append(_pause)
