"""Which process is which: identities that survive pid reuse, and children that die with parents.

Standard library only, so a training child or a torchrun worker can import it cheaply.

* :class:`ProcessIdentity` names a process by pid, start time, host and boot id; :func:`is_alive`
  tells whether that very process still runs (a reused pid is a different process).
* :func:`die_with_parent` makes a child (the forked training child, torchrun and its workers)
  die with the process that started it: ``PR_SET_PDEATHSIG`` on Linux plus a watch thread.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TAG_PID = "mlx/worker_pid"
TAG_START = "mlx/worker_start"
TAG_HOST = "mlx/worker_host"
TAG_BOOT = "mlx/worker_boot"
TAGS = (TAG_PID, TAG_START, TAG_HOST, TAG_BOOT)
"""Run tags that record the process executing a run (see mlx_resources.run_liveness)."""

PARENT_ENV = "MLX_PARENT_PROCESS"
"""``pid:start:host:boot`` of the process a child must die with (see :func:`die_with_parent`)."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, told apart from a later process that reuses its pid.

    ``start`` is the process start time in clock ticks since boot (``/proc/<pid>/stat`` field
    22) on Linux, or "" where unknown; ``boot`` is the kernel boot id ("" where unknown).
    """

    pid: int
    start: str
    host: str
    boot: str

    def tags(self) -> dict[str, str]:
        return {
            TAG_PID: str(self.pid),
            TAG_START: self.start,
            TAG_HOST: self.host,
            TAG_BOOT: self.boot,
        }

    def encode(self) -> str:
        return f"{self.pid}:{self.start}:{self.host}:{self.boot}"

    @classmethod
    def decode(cls, text: str) -> ProcessIdentity:
        pid, start, host, boot = text.split(":", 3)
        return cls(int(pid), start, host, boot)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessIdentity | None:
        """The identity recorded on a run, or None if the run has none (or a malformed one)."""
        if TAG_PID not in tags or TAG_HOST not in tags:
            return None
        try:
            pid = int(tags[TAG_PID])
        except ValueError:
            return None
        return cls(pid, tags.get(TAG_START, ""), tags[TAG_HOST], tags.get(TAG_BOOT, ""))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start ticks) of a live pid from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", "")
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot) on Linux; "" where unknown."""
    stat = _proc_stat(pid) if sys.platform.startswith("linux") else None
    return stat[1] if stat else ""


def identity(pid: int | None = None) -> ProcessIdentity:
    """The identity of ``pid`` (default: this process) on this host."""
    pid = os.getpid() if pid is None else pid
    return ProcessIdentity(pid, process_start(pid), socket.gethostname(), _boot_id())


def is_alive(who: ProcessIdentity) -> bool | None:
    """Whether the process is still running: None when it cannot be judged from this host.

    Dead means: no such pid, a zombie, a different process under the same pid (start time
    differs), or a host that rebooted since (boot id differs).
    """
    if who.host != socket.gethostname():
        return None
    boot = _boot_id()
    if who.boot and boot and who.boot != boot:
        return False
    if sys.platform.startswith("linux"):
        stat = _proc_stat(who.pid)
        if stat is None:
            return False
        state, start = stat
        if state in ("Z", "X"):
            return False
        return not (who.start and start and start != who.start)
    try:
        os.kill(who.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_running(pid: int) -> bool:
    """Whether a process with this pid runs on this host now (a zombie counts as dead)."""
    return is_alive(ProcessIdentity(pid, "", socket.gethostname(), "")) is not False


# -- children die with their parent ------------------------------------------------------------
def _set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(parent: ProcessIdentity, interval_s: float) -> None:
    import time

    while True:
        if is_alive(parent) is False:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(interval_s)


def die_with_parent(parent: ProcessIdentity | None = None, interval_s: float = 1.0) -> None:
    """Make this process die (SIGKILL) when its parent, or the given ``parent`` process, dies.

    Sets Linux's ``PR_SET_PDEATHSIG`` (the kernel kills us when the process that forked us
    exits) and, when ``parent`` is given (or ``MLX_PARENT_PROCESS`` is set), starts a daemon
    thread that checks that process every ``interval_s`` seconds: a forkserver's child has the
    forkserver, not the run's process, as its parent.
    """
    ppid = os.getppid()
    _set_pdeathsig()
    if parent is None and os.environ.get(PARENT_ENV):
        try:
            parent = ProcessIdentity.decode(os.environ[PARENT_ENV])
        except ValueError:
            parent = None
    if os.getppid() != ppid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    if parent is not None:
        if is_alive(parent) is False:
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(
            target=_watch, args=(parent, interval_s), daemon=True, name="mlx-parent-watch"
        ).start()


def parent_env() -> dict[str, str]:
    """Environment that tells a child (via :func:`die_with_parent`) to die with this process."""
    return {PARENT_ENV: identity().encode()}


def with_parent_death(command: Sequence[str]) -> list[str]:
    """``command`` run so that it dies with this process (torchrun and the like).

    ``python -m mlx_plugins.kernel.process_identity PID:START:HOST:BOOT -- CMD...`` arms
    ``PR_SET_PDEATHSIG`` (it survives ``exec``), sets ``MLX_PARENT_PROCESS`` so that CMD's own
    children can :func:`die_with_parent` on this process, then ``exec``s CMD.
    """
    return [
        sys.executable,
        "-m",
        "mlx_plugins.kernel.process_identity",
        identity().encode(),
        "--",
        *command,
    ]


def _main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(
            "usage: python -m mlx_plugins.kernel.process_identity PID:START:HOST:BOOT -- CMD..."
        )
    parent = ProcessIdentity.decode(argv[0])
    _set_pdeathsig()
    if is_alive(parent) is False:
        raise SystemExit(1)
    os.environ[PARENT_ENV] = parent.encode()
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    _main(sys.argv[1:])
