"""Which limit a finished sandboxed child hit, read from its exit and its stderr: every way an
out-of-memory child has been seen to report it is the ``memory_mb`` limit, and nothing else is."""

from __future__ import annotations

import signal

import pytest

from mlx_resources.sandbox.runner import SandboxSpec, limit_hit

BOUNDED = SandboxSpec(memory_mb=60)
UNBOUNDED = SandboxSpec()


@pytest.mark.parametrize(
    "stderr_tail",
    [
        "Traceback (most recent call last):\n  ...\nMemoryError\n",
        # seen in CI: an interpreter out of memory prints with no newline between messages
        "MemoryErrorException ignored in sys.unraisablehookMemoryErrorException ignored in",
        "ImportError: libfoo.so: failed to map segment from shared object",
        "OSError: [Errno 12] Cannot allocate memory",
        "memory allocation of 1048576 bytes failed",
        "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 7.45 GiB for an array",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "Fatal Python error: _PyMem_DebugMalloc: Python memory allocator called: out of memory",
    ],
)
def test_every_out_of_memory_report_is_the_memory_limit(stderr_tail):
    assert limit_hit(BOUNDED, 1, {}, stderr_tail) == "memory_mb"


@pytest.mark.parametrize(
    "stderr_tail",
    ["MemoryErrorException ignored in sys.unraisablehook", "MemoryError\n"],
)
def test_an_unbounded_child_is_never_said_to_hit_a_memory_limit(stderr_tail):
    assert limit_hit(UNBOUNDED, 1, {}, stderr_tail) is None


@pytest.mark.parametrize(
    "stderr_tail",
    ["ValueError: bad value", "KeyError: 'memory'", "", "RuntimeError: allocation refused"],
)
def test_other_failures_are_not_a_limit(stderr_tail):
    assert limit_hit(BOUNDED, 1, {}, stderr_tail) is None


def test_a_clean_exit_is_never_a_limit_whatever_stderr_says():
    assert limit_hit(BOUNDED, 0, {}, "MemoryError") is None


def test_rust_abort_on_failed_allocation_is_the_memory_limit():
    assert limit_hit(BOUNDED, -signal.SIGABRT, {}, "memory allocation of 64 bytes failed") == (
        "memory_mb"
    )
