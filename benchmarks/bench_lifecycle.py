"""The whole lifecycle through Dagster against a plain script doing the same work (the floor).

The plain script calls the same polars and torch functions in sequence with files in between:
read the source, write, read, build features, write, read, split by time, train, evaluate,
compare each day's drift. MLX runs `mlx lifecycle` on a fresh instance and home. Both at each
scale, in the same process run; the ratio is MLX / floor. Goal: under 1.5x at 10x scale.

    ./dev bench lifecycle [--scales 1 10] [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def composition(scale: float, epochs: int) -> dict:
    raw = yaml.safe_load((ROOT / "mlx.yaml").read_text())
    raw["plugins"]["data_source"][0]["config"]["scale"] = scale
    raw["plugins"]["ml_platform"]["config"]["epochs"] = epochs
    raw.pop("profiles", None)
    # Time the same work as the floor, which has no gate: a model that misses the quality gate
    # (it can at 10x, where the resampled copies shift the calibration) must still register.
    raw.setdefault("settings", {})["quality_gate"] = {
        "min_roc_auc": 0.0,
        "max_log_loss_ratio": 100.0,
    }
    return raw


def run_mlx(scale: float, epochs: int, work: Path) -> float:
    comp = work / "mlx.yaml"
    comp.write_text(yaml.safe_dump(composition(scale, epochs)))
    env = {
        **os.environ,
        "MLX_HOME": str(work / "home"),
        "MLX_COMPOSITION": str(comp),
        "DAGSTER_HOME": str(work / "dagster"),
    }
    env.pop("MLX_PROFILE", None)
    (work / "dagster").mkdir()
    (work / "dagster" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlx_assets.cli", "lifecycle"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_floor(scale: float, epochs: int, work: Path) -> float:
    """The same work as plain function calls; files written with polars in between."""
    code = f"""
import time, polars as pl
from datetime import date
start = time.perf_counter()
from mlx_plugins.data_sources.nycflights13 import NYCFlights13Source
from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
from mlx_plugins.ml_platforms.base import TrainingSpec
from mlx_plugins.drift_detectors.polars_drift import PolarsDriftDetector
from mlx_assets.features.flight_features import (
    build_features, NUMERIC_FEATURES, CATEGORICAL_FEATURES, TARGET)
from mlx_assets.training.training_set import split_by_time, SPLIT
from mlx_assets.evaluation.evaluation import evaluate
from mlx_assets.monitoring.feature_drift import FEATURES, MONITORED_NUMERIC, MONITORED_CATEGORICAL
from mlx_resources.platform import TrainingWindow
w = {str(work)!r}
src = NYCFlights13Source(scale={scale})
with src.session():
    for t in ("flights", "weather", "planes"):
        src.read(t).write_ipc(f"{{w}}/{{t}}.arrow")
fl, we, pn = (pl.read_ipc(f"{{w}}/{{t}}.arrow") for t in ("flights", "weather", "planes"))
build_features(fl, we, pn).write_ipc(f"{{w}}/features.arrow")
ts = split_by_time(pl.scan_ipc(f"{{w}}/features.arrow"), TrainingWindow())
ts.write_ipc(f"{{w}}/training_set.arrow")
ts = pl.read_ipc(f"{{w}}/training_set.arrow")
spec = TrainingSpec(numeric_features=NUMERIC_FEATURES, categorical_features=CATEGORICAL_FEATURES,
                    target=TARGET, artifact_dir=f"{{w}}/model")
p = LocalTorchPlatform(epochs={epochs})
with p.session():
    m = p.train(ts.filter(pl.col(SPLIT) == "train"), ts.filter(pl.col(SPLIT) == "valid"), spec)
    test = ts.filter(pl.col(SPLIT) == "test")
    base = float(ts.filter(pl.col(SPLIT) == "train")[TARGET].mean())
    y, carriers = test[TARGET].to_numpy().astype(bool), test["carrier"].to_numpy()
    ev = evaluate(y, p.predict_proba(m, test), carriers, base)
feats = pl.read_ipc(f"{{w}}/features.arrow")
ref = ts.filter(pl.col(SPLIT) == "train").select(FEATURES)
det = PolarsDriftDetector()
prep = det.prepare_reference(ref, numeric=MONITORED_NUMERIC, categorical=MONITORED_CATEGORICAL)
for (d,), cur in feats.partition_by("date", as_dict=True).items():
    det.compare_prepared(prep, cur.select(FEATURES))
print(time.perf_counter() - start)
"""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved; the best of each counts")
    args = ap.parse_args()
    print(f"{'scale':>6} {'floor s':>9} {'mlx s':>9} {'ratio':>7}")
    for scale in args.scales:
        floors, ours = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                ours.append(run_mlx(scale, args.epochs, Path(b)))
                floors.append(run_floor(scale, args.epochs, Path(a)))
        floor, mlx = min(floors), min(ours)
        print(
            f"{scale:>6g} {floor:>9.1f} {mlx:>9.1f} {mlx / floor:>6.2f}x   "
            f"(all floor: {', '.join(f'{x:.1f}' for x in floors)}; "
            f"all mlx: {', '.join(f'{x:.1f}' for x in ours)})",
            flush=True,
        )
    print("\ngoal: under 1.5x at 10x scale (both include interpreter start and imports)")


if __name__ == "__main__":
    main()
