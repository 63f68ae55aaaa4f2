"""The daemon itself: killed runs held every run slot; run monitoring frees them and the
queued run behind them is launched and succeeds (issue 9 item 9: "the daemon stops launching
anything")."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from mlx_resources.instance_home import ensure_dagster_home
from mlx_resources.platform import REPO_ROOT
from tests.faults.conftest import child_env, wait_for
from tests.faults.test_killed_runs import _kill_running_tiny

BIN = Path(sys.executable).parent


def test_daemon_fails_dead_runs_and_launches_the_queued_one(home, tmp_path):
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    # The repository's instance config, polled faster and with two run slots (not four) so the
    # test is short; the slots are blocked and freed the same way.
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 2
    config["run_monitoring"]["poll_interval_seconds"] = 1
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
        assert limit == 2
        dead = _kill_running_tiny(tmp_path, instance, n=limit)

        launch = subprocess.run(
            [BIN / "dagster", "job", "launch", "-m", "tests.faults._tiny", "-j", "tiny"],
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-2000:]
        (queued,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))

        daemon = subprocess.Popen(
            [BIN / "dagster-daemon", "run", "-m", "tests.faults._tiny"],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                "the queued run to be launched and succeed",
                lambda: instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.SUCCESS,
                timeout_s=180,
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        assert {instance.get_run_by_id(r).status for r in dead} == {dg.DagsterRunStatus.FAILURE}
        events = instance.all_logs(dead[0], of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "is gone" in events[-1].message
