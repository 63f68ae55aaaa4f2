"""Daily partitions of the flight-level assets: every day of 2013."""

import dagster as dg

DAILY_2013 = dg.DailyPartitionsDefinition(start_date="2013-01-01", end_date="2014-01-01")
SINGLE_RUN = dg.BackfillPolicy.single_run()
