"""kill -9 while an object output is pickled: the previous value stays readable (the platform's
``object_io_manager``; Dagster's own pickling IO manager truncates the final file first)."""

from __future__ import annotations

import pickle
import signal
import textwrap

import dagster as dg
import pytest

from mlx_resources.atomic_pickle_io import AtomicFilesystemIOManager
from mlx_resources.leftovers import clean_temp_files, temp_owner
from tests.faults.conftest import start

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import dagster as dg
    from {module} import {cls}

    class Bomb:  # kill -9 of this process in the middle of pickling
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    @dg.asset
    def thing():
        return [b"x" * 2_000_000, Bomb()]

    dg.materialize([thing], resources={{"io_manager": {cls}(base_dir=sys.argv[1])}},
                   instance=dg.DagsterInstance.ephemeral())
    """
)


@dg.asset
def thing() -> dict[str, int]:
    return {"v": 1}


@dg.asset
def reader(thing: dict[str, int]) -> int:
    return thing["v"]


@pytest.mark.parametrize(
    ("module", "cls", "survives"),
    [
        ("mlx_resources.atomic_pickle_io", "AtomicFilesystemIOManager", True),
        ("dagster", "FilesystemIOManager", False),  # the behaviour this replaces
    ],
)
def test_killed_pickle_write_keeps_the_previous_value(tmp_path, module, cls, survives):
    io = AtomicFilesystemIOManager(base_dir=str(tmp_path))
    result = dg.materialize([thing], resources={"io_manager": io})
    assert result.success
    final = tmp_path / "thing"
    before = final.read_bytes()

    proc = start(["-c", WRITER.format(module=module, cls=cls), str(tmp_path)])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out[-2000:]
    if not survives:
        assert final.read_bytes() != before  # truncated under its final name
        return
    assert final.read_bytes() == before
    assert pickle.loads(final.read_bytes()) == {"v": 1}
    loaded = dg.materialize([thing, reader], selection=[reader], resources={"io_manager": io})
    assert loaded.output_for_node("reader") == 1
    temps = [p for p in tmp_path.iterdir() if temp_owner(p.name)[0]]
    assert [temp_owner(p.name)[1] for p in temps] == [proc.pid]
    assert clean_temp_files([tmp_path], grace_s=0).removed == temps


def test_unpicklable_output_names_the_output_and_the_fix(tmp_path):
    @dg.asset
    def bad():  # type: ignore[no-untyped-def]
        return lambda: 1

    with pytest.raises(dg.Failure, match=r"cannot pickle the output .*function.*fix:"):
        dg.materialize(
            [bad], resources={"io_manager": AtomicFilesystemIOManager(base_dir=str(tmp_path))}
        )
    assert list(tmp_path.iterdir()) == []
