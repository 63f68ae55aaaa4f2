"""Sensor cursors and schedule state live in PostgreSQL: a real ``dagster-daemon run`` is
killed (SIGKILL, as a crash or an evicted pod) and started again, and everything goes on from
where it was. Code location: tests/deploy/_sensors.py."""

from __future__ import annotations

import signal
import subprocess

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

from tests.deploy.conftest import BIN, ProdHome, start, stop, wait_for

MODULE = "tests.deploy._sensors"


def _state(instance: dg.DagsterInstance, kind: InstigatorType, name: str):  # type: ignore[no-untyped-def]
    for state in instance.all_instigator_state(instigator_type=kind):
        if state.instigator_name == name:
            return state
    return None


def _cursor(instance: dg.DagsterInstance) -> int:
    state = _state(instance, InstigatorType.SENSOR, "counting")
    cursor = state.instigator_data.cursor if state and state.instigator_data else None
    return int(cursor or 0)


def _cli(prod: ProdHome, *args: str) -> None:
    done = subprocess.run(
        [str(BIN / "dagster"), *args, "-m", MODULE],
        env=prod.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_sensor_cursor_and_schedule_state_survive_a_daemon_restart(prod_home: ProdHome):
    prod = prod_home
    # Schedule state set by hand before the daemon ever runs: one declared RUNNING is stopped,
    # one declared STOPPED is started. Both are rows in the PostgreSQL schedule storage.
    _cli(prod, "schedule", "stop", "hourly_on")
    _cli(prod, "schedule", "start", "every_minute")
    log = prod.home / "daemon.log"
    daemon = start([BIN / "dagster-daemon", "run", "-m", MODULE], prod.env, log)
    with prod.instance() as instance:
        try:
            wait_for("3 sensor evaluations", lambda: _cursor(instance) >= 3, timeout_s=180)
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=30)
            before = _cursor(instance)
            daemon = start([BIN / "dagster-daemon", "run", "-m", MODULE], prod.env, log)
            wait_for(
                "3 more sensor evaluations after the restart",
                lambda: _cursor(instance) >= before + 3,
                timeout_s=180,
            )
            # The started schedule ticks under the new daemon and its run goes through the
            # production queue (MlxQueuedRunCoordinator) to success.
            run = wait_for(
                "a successful run of the every_minute schedule",
                lambda: next(
                    (
                        r
                        for r in instance.get_runs(
                            dg.RunsFilter(tags={"dagster/schedule_name": "every_minute"})
                        )
                        if r.status == dg.DagsterRunStatus.SUCCESS
                    ),
                    None,
                ),
                timeout_s=240,
            )
        finally:
            stop(daemon)
        assert run.tags["mlx/job"] == "ping_job"  # type: ignore[attr-defined]

        sensor = _state(instance, InstigatorType.SENSOR, "counting")
        ticks = instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id, limit=1000)
        cursors = [int(t.cursor) for t in sorted(ticks, key=lambda t: t.timestamp) if t.cursor]
        # Every evaluation continued from the stored cursor: never back, no restart from 1 (a
        # kill between storing a tick and its cursor may repeat one value, not go back).
        assert cursors == sorted(cursors), cursors
        assert cursors[0] <= before < cursors[-1], (before, cursors)
        assert cursors.count(1) == 1

        assert _state(instance, InstigatorType.SCHEDULE, "hourly_on").status == (
            InstigatorStatus.STOPPED
        )
        assert _state(instance, InstigatorType.SCHEDULE, "every_minute").status == (
            InstigatorStatus.RUNNING
        )
    # No error while it ran (what the final SIGTERM interrupts, e.g. a launch under way, is not
    # the daemon's fault).
    running = log.read_text().rsplit("Received interrupt, shutting down", 1)[0]
    assert "Traceback" not in running, running[-3000:]


def test_the_daemon_refuses_a_missing_database_with_the_cause(prod_home: ProdHome):
    """A wrong DAGSTER_PG_DB: the daemon exits non-zero and says which database is missing."""
    env = {**prod_home.env, "DAGSTER_PG_DB": "mlx_no_such_db"}
    done = subprocess.run(
        [str(BIN / "dagster-daemon"), "run", "-m", MODULE],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert 'database "mlx_no_such_db" does not exist' in done.stdout + done.stderr
