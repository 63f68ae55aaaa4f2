"""Cron strings checked when the composition loads, with the fix in the message."""

from __future__ import annotations


def check_cron(value: str) -> str:
    """Return ``value`` if Dagster accepts it as a schedule's cron string, else raise
    ``ValueError`` saying what a valid one looks like.

    Accepted: five fields (minute hour day-of-month month day-of-week, e.g. ``"*/5 * * * *"``)
    or Dagster's shortcuts (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``).
    """
    import dagster as dg

    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=value, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError:
        raise ValueError(
            f"{value!r} is not a cron schedule\nfix: write five fields, minute hour day-of-month "
            "month day-of-week, e.g. '* * * * *' (every minute), '*/5 * * * *' (every 5 "
            "minutes), '0 6 * * *' (06:00 daily), or @hourly / @daily"
        ) from None
    return value
