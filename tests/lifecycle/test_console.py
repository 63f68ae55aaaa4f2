"""The lifecycle console: plain lines when not a terminal, a progress bar on one."""

from __future__ import annotations

import io

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
