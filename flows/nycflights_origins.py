"""NYC flights 2013 per origin airport: days × origins → months → the year, and a
running count of flights per origin.

Stages:

* ``flights``: exactly ``flows/nycflights.py`` (its plan, extract, transform and schema
  reused, not copied), one file per day.
* ``origin_daily``: date × origin (EWR, JFK, LGA), its own ``Product`` plan; each chunk
  reads its day's flights file (``FromFunction``: a date × origin key names the one-dimensional
  day key ``date=…``) and keeps its origin's rows.
* ``origin_monthly``: month × origin, ``Along("date", CalendarWindow("month"))`` over
  ``origin_daily``: each month of an origin adds up that origin's days.
* ``origin_year``: year × origin, ``Along("month", CalendarWindow("year"))`` over
  ``origin_monthly`` (the month dimension is keyed ``month=…``).
* ``origin_running``: date × origin, flights to date per origin: its ``origin_daily``
  chunk plus its own previous day (``Previous(per="origin")``), a chain per origin.

Every stage keeps sums and counts (``dep_delay_sum``, ``dep_delay_n``) so rollups add
exactly.

Run it::

    distetl run flows/nycflights_origins.py --output ./output
    distetl run flows/nycflights_origins.py --output ./output --stage origin_monthly
"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa

from distetl import (Along, CalendarWindow, ChunkList, Chunk, FromFunction, Identity, Input, Pipeline,
                     Previous, Product, Stage)
from distetl.engine.loader import load_pipeline

#: The one-stage nycflights pipeline, loaded from its flow file beside this one.
NYC = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nycflights.py"))

#: The three New York origin airports of the data.
ORIGINS = ("EWR", "JFK", "LGA")

#: Days × origins, dimensions in this order (date first, as rollups expect).
DAYS_BY_ORIGIN = Product(NYC.plan, ChunkList(list(ORIGINS), key_field="origin"))

#: Columns of every per-origin rollup stage, in order.
ROLLUP_SCHEMA = pa.schema([
    ("flights", pa.int64()),
    ("dep_delay_sum", pa.float64()),
    ("dep_delay_n", pa.int64()),
])

RUNNING_SCHEMA = pa.schema([("flights_to_date", pa.int64())])

_SUMS = ["flights", "dep_delay_sum", "dep_delay_n"]


def day_of(chunk: Chunk) -> list[str]:
    """The flights chunk a date × origin chunk reads: its day."""
    return [f"date={chunk['date']}"]


def _frame(flights: int, dep_sum: float, dep_n: int) -> pd.DataFrame:
    return pd.DataFrame({"flights": pd.Series([flights], dtype="int64"),
                         "dep_delay_sum": pd.Series([dep_sum], dtype="float64"),
                         "dep_delay_n": pd.Series([dep_n], dtype="int64")})


def origin_day(chunk: Chunk, ctx) -> pd.DataFrame:
    """One origin's flight count and departure delay sum/count on one day."""
    day = ctx.read_inputs("flights")
    mine = day[day["origin"] == chunk["origin"]]
    delay = mine["dep_delay"]
    return _frame(len(mine), float(delay.sum()), int(delay.count()))


def add_up(rollups: pd.DataFrame) -> pd.DataFrame:
    """Sums of finer rollups of one origin (days into a month, months into the year)."""
    return _frame(int(rollups["flights"].sum()), float(rollups["dep_delay_sum"].sum()),
                  int(rollups["dep_delay_n"].sum()))


def running(chunk: Chunk, ctx) -> pd.DataFrame:
    """Flights of this origin so far: today's plus the previous day's running count."""
    today = int(ctx.read_inputs("today")["flights"].sum())
    before = int(ctx.read_inputs("before")["flights_to_date"].iloc[0]) if ctx.inputs["before"] else 0
    return pd.DataFrame({"flights_to_date": pd.Series([before + today], dtype="int64")})


flights = Stage(
    name="flights",
    plan=NYC.plan,
    extract=NYC.extract,
    transform=NYC.transform,
    schema=NYC.schema,
    target="{output}/flights/date={date}/part-0.parquet",
)

origin_daily = Stage(
    name="origin_daily",
    plan=DAYS_BY_ORIGIN,
    inputs={"flights": Input("flights", FromFunction(day_of))},
    extract=origin_day,
    schema=ROLLUP_SCHEMA,
    target="{output}/origin_daily/date={date}/origin={origin}/part-0.parquet",
)

origin_monthly = Stage(
    name="origin_monthly",
    upstream=origin_daily,
    mapping=Along("date", CalendarWindow("month")),
    transform=add_up,
    schema=ROLLUP_SCHEMA,
    target="{output}/origin_monthly/month={month}/origin={origin}/part-0.parquet",
)

origin_year = Stage(
    name="origin_year",
    upstream=origin_monthly,
    mapping=Along("month", CalendarWindow("year")),
    transform=add_up,
    schema=ROLLUP_SCHEMA,
    target="{output}/origin_year/year={year}/origin={origin}/part-0.parquet",
)

origin_running = Stage(
    name="origin_running",
    plan=DAYS_BY_ORIGIN,
    inputs={"today": Input("origin_daily", Identity()),
            "before": Input("origin_running", Previous(per="origin"))},
    extract=running,
    schema=RUNNING_SCHEMA,
    target="{output}/origin_running/date={date}/origin={origin}/part-0.parquet",
)

pipeline = Pipeline(
    name="nycflights_origins",
    stages=[flights, origin_daily, origin_monthly, origin_year, origin_running],
    description="NYC flights 2013 per origin: days, months, the year and a running count",
)
