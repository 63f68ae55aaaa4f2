"""The lifecycle console: plain lines when not a terminal, a progress bar on one."""

from __future__ import annotations

import io
import time

from mlx_assets.console import Console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pipe_gets_plain_lines_and_no_bar():
    out = io.StringIO()
    console = Console(stream=out)
    assert not console.tty
    with console.progress("daily data: 3 days", 9) as advance:
        for _ in range(9):
            advance(1)
    console.line("daily data: done in 1.0s (run 01234567)")
    assert out.getvalue().splitlines() == [
        "[mlx] daily data: 3 days ...",
        "[mlx] daily data: done in 1.0s (run 01234567)",
    ]


def test_terminal_gets_a_progress_bar_with_done_and_total():
    out = _Tty()
    console = Console(stream=out)
    assert console.tty
    with console.progress("daily data: 3 days", 9) as advance:
        advance(0, step="raw_weather")
        for _ in range(4):
            advance(1)
    drawn = out.getvalue()
    assert "raw_weather" in drawn  # the running step next to the bar
    assert "daily data: 3 days" in drawn and "4/9" in drawn and "partitions" in drawn
    assert "\x1b[" in drawn  # drawn in place with terminal control codes, then erased


def test_verbose_never_draws_a_bar():
    console = Console(stream=_Tty(), verbose=True)
    assert console.verbose and not console.tty


def test_a_long_stage_without_a_bar_prints_its_progress_while_it_runs():
    """A pipe or CI log is never silent on long work: each heartbeat_s a line with what is done
    and the step running; none once the stage has ended."""
    out = io.StringIO()
    console = Console(stream=out, heartbeat_s=0.01)
    with console.progress("training: 1 model", 3, short="training", unit="assets") as advance:
        advance(1)
        advance(0, step="train_model")
        deadline = time.monotonic() + 30
        while "started: train_model" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[mlx] training: 1 model ..."
    beat = next(line for line in lines if "started: train_model" in line)
    assert beat.startswith("[mlx]   training: 1/3 assets, last step started: train_model, ")
    ended = len(out.getvalue())
    time.sleep(0.05)
    assert len(out.getvalue()) == ended  # the heartbeat stopped with the stage


def test_a_short_stage_prints_no_heartbeat():
    out = io.StringIO()
    console = Console(stream=out, heartbeat_s=3600)
    with console.progress("daily data: 3 days", 9) as advance:
        advance(9)
    assert out.getvalue().splitlines() == ["[mlx] daily data: 3 days ..."]
