"""Children die with the process that started them (the mechanisms local_torch and DDP use)."""

from __future__ import annotations

import os
import signal
import textwrap

from mlx_resources.process_identity import pid_running
from tests.faults.conftest import start, wait_for

PARENT_EXEC = textwrap.dedent(
    """
    import subprocess, sys, time
    from mlx_resources.process_identity import with_parent_death
    child = subprocess.Popen(with_parent_death(["sleep", "600"]))
    print(child.pid, flush=True)
    time.sleep(600)
    """
)
# The grandchild watches the top process through MLX_PARENT_PROCESS, although its own parent (a
# stand-in for the forkserver or torchrun's agent) stays alive.
PARENT_WATCH = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from mlx_resources.process_identity import parent_env
    code = (
        "import time; from mlx_resources.process_identity import die_with_parent;"
        "die_with_parent(interval_s=0.1); time.sleep(600)"
    )
    middle = (
        "import subprocess, sys, time;"
        f"g = subprocess.Popen([sys.executable, '-c', {code!r}]);"
        "print(g.pid, flush=True); time.sleep(600)"
    )
    m = subprocess.Popen([sys.executable, "-c", middle], env={**os.environ, **parent_env()},
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    print(m.stdout.readline().strip(), m.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_command_started_with_parent_death_dies_with_its_parent():
    parent = start(["-c", PARENT_EXEC])
    child = int(parent.stdout.readline())
    assert pid_running(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    wait_for("the exec'd child to die with its parent", lambda: not pid_running(child))


def test_a_grandchild_dies_with_the_process_it_watches():
    top = start(["-c", PARENT_WATCH])
    grandchild, middle = (int(x) for x in top.stdout.readline().split())
    assert pid_running(grandchild) and pid_running(middle)
    os.kill(top.pid, signal.SIGKILL)
    top.wait()
    try:
        wait_for("the grandchild to die with the top process", lambda: not pid_running(grandchild))
        assert pid_running(middle)  # its direct parent lived on: the watch thread did it
    finally:
        os.kill(middle, signal.SIGKILL)
