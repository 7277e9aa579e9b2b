"""NYC flights 2013 as a graph of stages: days → per-carrier days → months → the year.

Stages:

* ``flights``: exactly ``flows/nycflights.py`` (its plan, extract, transform and schema
  reused, not copied), one file per day.
* ``carrier_daily``: per-carrier delay statistics of each day (identity mapping).
* ``carrier_monthly``: per-carrier rollup of each month from its days (day → month).
* ``carrier_year``: the summary of the year from its months (month → year window, key
  ``year=2013``; the flights data holds 2013 only, so the target needs no ``{year}``).

Each rollup keeps sums and counts next to its means, so the next stage adds sums and
counts and its means are exact (a mean of means would not be).

Run it::

    distetl run flows/nycflights_rollups.py --output ./output
    distetl run flows/nycflights_rollups.py --output ./output --stage carrier_monthly
"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa

from distetl import CalendarWindow, Identity, Pipeline, Stage
from distetl.engine.loader import load_pipeline

#: The one-stage nycflights pipeline, loaded from its flow file beside this one (and
#: shipped to workers with this file).
NYC = load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nycflights.py"))

#: Columns every rollup stage writes, in order.
ROLLUP_SCHEMA = pa.schema([
    ("carrier", pa.string()),
    ("flights", pa.int64()),
    ("cancelled", pa.int64()),
    ("dep_delay_sum", pa.float64()),
    ("dep_delay_n", pa.int64()),
    ("arr_delay_sum", pa.float64()),
    ("arr_delay_n", pa.int64()),
    ("arr_delayed_15", pa.int64()),
    ("dep_delay_mean", pa.float64()),
    ("arr_delay_mean", pa.float64()),
])

_SUMS = ["flights", "cancelled", "dep_delay_sum", "dep_delay_n", "arr_delay_sum", "arr_delay_n", "arr_delayed_15"]


def _with_means(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.sort_values("carrier").reset_index(drop=True)
    out["dep_delay_mean"] = out["dep_delay_sum"] / out["dep_delay_n"].where(out["dep_delay_n"] > 0)
    out["arr_delay_mean"] = out["arr_delay_sum"] / out["arr_delay_n"].where(out["arr_delay_n"] > 0)
    return out


def carrier_stats(flights: pd.DataFrame) -> pd.DataFrame:
    """Per-carrier statistics of one day's flights."""
    grouped = flights.groupby("carrier", sort=True)
    frame = pd.DataFrame({
        "flights": grouped.size(),
        "cancelled": grouped["cancelled"].sum().astype("int64"),
        "dep_delay_sum": grouped["dep_delay"].sum(),
        "dep_delay_n": grouped["dep_delay"].count(),
        "arr_delay_sum": grouped["arr_delay"].sum(),
        "arr_delay_n": grouped["arr_delay"].count(),
        "arr_delayed_15": grouped["arr_delayed_15"].sum().astype("int64"),
    }).reset_index()
    return _with_means(frame)


def add_up(rollups: pd.DataFrame) -> pd.DataFrame:
    """Per-carrier sums of finer rollups (days into a month, months into the year)."""
    frame = rollups.groupby("carrier", sort=True)[_SUMS].sum().reset_index()
    return _with_means(frame)


flights = Stage(
    name="flights",
    plan=NYC.plan,
    extract=NYC.extract,
    transform=NYC.transform,
    schema=NYC.schema,
    target="{output}/flights/date={date}/part-0.parquet",
)

carrier_daily = Stage(
    name="carrier_daily",
    upstream=flights,
    mapping=Identity(),
    transform=carrier_stats,
    schema=ROLLUP_SCHEMA,
    target="{output}/carrier_daily/date={date}/part-0.parquet",
)

carrier_monthly = Stage(
    name="carrier_monthly",
    upstream=carrier_daily,
    mapping=CalendarWindow("month"),
    transform=add_up,
    schema=ROLLUP_SCHEMA,
    target="{output}/carrier_monthly/month={month}/part-0.parquet",
)

carrier_year = Stage(
    name="carrier_year",
    upstream=carrier_monthly,
    mapping=CalendarWindow("year"),
    transform=add_up,
    schema=ROLLUP_SCHEMA,
    target="{output}/carrier_year/part-0.parquet",
)

pipeline = Pipeline(
    name="nycflights_rollups",
    stages=[flights, carrier_daily, carrier_monthly, carrier_year],
    description="NYC flights 2013: days, per-carrier days, months and the year",
)
