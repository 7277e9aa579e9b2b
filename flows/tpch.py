"""TPC-H lineitem, priced and joined with its orders: a CPU-heavy backfill.

Source: TPC-H ``lineitem`` and ``orders`` tables generated with ``tpchgen-cli`` as
Parquet, split into ``parts`` files each (generated once into a cache folder, at plan
time, if absent). ``tpchgen-cli`` cuts both tables by order key, so lineitem part *i*
holds exactly the line items of orders part *i*: each chunk is one part and needs no
other file.

Each chunk reads its lineitem part, adds the pricing-summary columns of TPC-H Q1
(``disc_price = extendedprice * (1 - discount)``, ``charge = disc_price * (1 + tax)``),
flags and ship-date parts, joins its orders (order date, priority, customer, status,
total price) and writes ``tpch/lineitem_priced/part=NNN/part-0.parquet``.

The generated files use ``string_view`` and ``decimal128(15, 2)`` columns; extract casts
them to ``string`` and ``float64`` so pandas gets plain columns.

Run it::

    distetl run flows/tpch.py --output ./output                    # SF 1, 16 parts
    distetl run flows/tpch.py --output ./output --sf 10 --parts 128

The cache folder is ``$DISTETL_TPCH_CACHE`` if set, else ``.distetl/tpch`` under
``$DISTETL_HOME`` (default: the current directory).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distetl import Chunk, ConfigError, Pipeline, Plan, PlanError

__all__ = ["TpchParts", "SCHEMA", "cache_dir", "ensure_tpch", "expected_totals", "pipeline",
           "price", "read_part"]

CACHE_ENV = "DISTETL_TPCH_CACHE"
TABLES = ("lineitem", "orders")


def cache_dir() -> Path:
    """Root of the generated-data cache: ``$DISTETL_TPCH_CACHE`` or ``$DISTETL_HOME/tpch``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).resolve()
    home = os.environ.get("DISTETL_HOME") or os.path.join(os.getcwd(), ".distetl")
    return Path(home).resolve() / "tpch"


def _sf_label(sf: float) -> str:
    return f"{sf:g}".replace(".", "_")


def _tpchgen() -> str:
    """The ``tpchgen-cli`` executable: on PATH, or beside this Python interpreter."""
    found = shutil.which("tpchgen-cli") or shutil.which("tpchgen-cli", path=os.path.dirname(sys.executable))
    if not found:
        raise ConfigError(
            "the tpchgen-cli command (TPC-H data generator)", "none on PATH",
            "pip install 'distetl[flows]' (or pip install tpchgen-cli)",
        )
    return found


def _has_table(folder: Path, table: str) -> bool:
    """Whether ``folder`` holds a generated ``table`` (a table's folder only ever appears
    complete: it is generated elsewhere and renamed into place)."""
    return any((folder / table).glob(f"{table}.*.parquet"))


def ensure_tpch(sf: float, parts: int, root: Optional[Path] = None,
                tables: Sequence[str] = TABLES) -> Path:
    """Generate TPC-H tables as Parquet parts unless already cached.

    Generation goes to a temporary sibling folder, renamed into place when complete, so
    an interrupted generation is never mistaken for a finished one. Tables missing from
    an existing cache folder (``customer`` where only ``lineitem`` and ``orders`` were
    generated) are generated alone and each table's folder is renamed into it.

    Args:
        sf: TPC-H scale factor (1 is about 6M line items).
        parts: Files per table (small tables such as ``nation`` get one file).
        root: Cache root (default :func:`cache_dir`).
        tables: The tables needed (default ``lineitem`` and ``orders``).

    Returns:
        The folder holding one sub-folder per table (``lineitem/``, ``orders/``, ...).

    Raises:
        ConfigError: If tpchgen-cli is missing or fails.
    """
    root = Path(root) if root is not None else cache_dir()
    final = root / f"sf{_sf_label(sf)}-p{parts}"
    missing = [t for t in tables if not _has_table(final, t)]
    if not missing:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    cmd = [_tpchgen(), "parquet", "-s", f"{sf:g}", "--tables", ",".join(missing), "--parts", str(parts),
           "-o", str(tmp), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"tpchgen-cli to generate SF {sf:g} in {parts} parts", (done.stderr or done.stdout)[-500:],
            "check the scale factor, the parts and the free disk space",
        )
    if not final.exists():
        try:
            os.replace(tmp, final)
            return final
        except OSError:  # a concurrent generation created it meanwhile: move table by table
            pass
    for table in missing:
        if not _has_table(final, table):  # else a concurrent generation finished it first
            shutil.rmtree(final / table, ignore_errors=True)
            os.replace(tmp / table, final / table)
    shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class TpchParts(Plan):
    """One chunk per TPC-H part: lineitem part *i* with orders part *i*.

    Chunk fields: ``part`` (``"001"``), ``lineitem`` and ``orders`` (file paths); key
    ``part=001``. The data is generated at plan time if the cache lacks it.

    Attributes:
        sf: Scale factor (``--sf``).
        parts: Parts per table (``--parts``).
        cache: Cache root; empty means :func:`cache_dir`.
    """

    sf: float = 1.0
    parts: int = 16
    cache: str = ""

    kind: ClassVar[str] = "tpch"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> list[Chunk]:
        if self.sf <= 0 or self.parts < 1:
            raise PlanError("--sf above 0 and --parts 1 or more", f"sf={self.sf}, parts={self.parts}",
                            "pass e.g. --sf 1 --parts 16")
        folder = ensure_tpch(self.sf, self.parts, Path(self.cache) if self.cache else None)
        width = max(3, len(str(self.parts)))
        out = []
        for i in range(1, self.parts + 1):
            out.append(Chunk(
                key=f"part={i:0{width}d}",
                fields={"part": f"{i:0{width}d}",
                        "lineitem": str(folder / "lineitem" / f"lineitem.{i}.parquet"),
                        "orders": str(folder / "orders" / f"orders.{i}.parquet")},
                index=i - 1,
            ))
        return out


def _plain(table: pa.Table) -> pa.Table:
    """Cast ``decimal128`` to ``float64`` and ``string_view`` to ``string``."""
    fields = []
    for fld in table.schema:
        if pa.types.is_decimal(fld.type):
            fields.append(pa.field(fld.name, pa.float64()))
        elif pa.types.is_string_view(fld.type):
            fields.append(pa.field(fld.name, pa.string()))
        else:
            fields.append(pa.field(fld.name, fld.type))
    return table.cast(pa.schema(fields))


LINEITEM_COLUMNS = [
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
    "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_commitdate",
    "l_receiptdate", "l_shipinstruct", "l_shipmode",
]
ORDERS_COLUMNS = ["o_orderkey", "o_custkey", "o_orderstatus", "o_totalprice", "o_orderdate",
                  "o_orderpriority"]


def read_part(path: str, columns: list[str]) -> pd.DataFrame:
    """One generated part file as pandas, with plain column types (float64, string,
    datetime64 for dates)."""
    table = _plain(pq.read_table(path, columns=columns))
    return table.to_pandas(date_as_object=False)


def extract(chunk: Chunk) -> pd.DataFrame:
    """The chunk's lineitem part."""
    return read_part(chunk["lineitem"], LINEITEM_COLUMNS)


@functools.lru_cache(maxsize=4)
def _orders(path: str) -> pd.DataFrame:
    return read_part(path, ORDERS_COLUMNS)


def price(lineitem: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """The transform proper: pricing-summary columns, flags, date parts, orders joined.

    Args:
        lineitem: Line items (plain column types, see :func:`read_part`).
        orders: The orders those line items belong to.
    """
    out = lineitem.rename(columns=lambda c: c[2:])
    price_ = out["extendedprice"]
    out["disc_price"] = price_ * (1.0 - out["discount"])
    out["charge"] = out["disc_price"] * (1.0 + out["tax"])
    out["discount_amount"] = price_ - out["disc_price"]
    out["tax_amount"] = out["charge"] - out["disc_price"]
    out["unit_price"] = price_ / out["quantity"]
    out["status_group"] = out["returnflag"] + "|" + out["linestatus"]
    out["is_returned"] = out["returnflag"].eq("R")
    out["is_open"] = out["linestatus"].eq("O")
    ship, commit, receipt = out["shipdate"], out["commitdate"], out["receiptdate"]
    out["ship_year"] = ship.dt.year.astype("int32")
    out["ship_month"] = ship.dt.month.astype("int32")
    out["ship_quarter"] = ship.dt.quarter.astype("int32")
    out["ship_weekday"] = ship.dt.dayofweek.astype("int32")
    out["ship_month_label"] = ship.dt.strftime("%Y-%m")
    out["is_late"] = receipt > commit
    out["transit_days"] = (receipt - ship).dt.days.astype("int32")
    out["q1_window"] = ship <= pd.Timestamp("1998-09-02")
    out["shipmode_upper"] = out["shipmode"].str.lower().str.capitalize()
    out["instruct_words"] = out["shipinstruct"].str.split().str.len().astype("int32")
    joined = out.merge(orders.rename(columns=lambda c: c[2:]), on="orderkey", how="inner",
                       suffixes=("", "_order"))
    joined["order_to_ship_days"] = (joined["shipdate"] - joined["orderdate"]).dt.days.astype("int32")
    joined["share_of_order"] = joined["charge"] / joined["totalprice"]
    joined["priority_rank"] = joined["orderpriority"].str.slice(0, 1).astype("int32")
    return joined


def transform(frame: pd.DataFrame, chunk: Chunk) -> pd.DataFrame:
    """Price one part's line items and join its orders."""
    return price(frame, _orders(chunk["orders"]))


SCHEMA = pa.schema([
    ("orderkey", pa.int64()),
    ("linenumber", pa.int32()),
    ("partkey", pa.int64()),
    ("suppkey", pa.int64()),
    ("custkey", pa.int64()),
    ("quantity", pa.float64()),
    ("extendedprice", pa.float64()),
    ("discount", pa.float64()),
    ("tax", pa.float64()),
    ("disc_price", pa.float64()),
    ("charge", pa.float64()),
    ("discount_amount", pa.float64()),
    ("tax_amount", pa.float64()),
    ("unit_price", pa.float64()),
    ("returnflag", pa.string()),
    ("linestatus", pa.string()),
    ("status_group", pa.string()),
    ("is_returned", pa.bool_()),
    ("is_open", pa.bool_()),
    ("is_late", pa.bool_()),
    ("q1_window", pa.bool_()),
    ("shipdate", pa.date32()),
    ("commitdate", pa.date32()),
    ("receiptdate", pa.date32()),
    ("ship_year", pa.int32()),
    ("ship_month", pa.int32()),
    ("ship_quarter", pa.int32()),
    ("ship_weekday", pa.int32()),
    ("ship_month_label", pa.string()),
    ("transit_days", pa.int32()),
    ("shipmode", pa.string()),
    ("shipmode_upper", pa.string()),
    ("instruct_words", pa.int32()),
    ("orderdate", pa.date32()),
    ("orderstatus", pa.string()),
    ("orderpriority", pa.string()),
    ("priority_rank", pa.int32()),
    ("totalprice", pa.float64()),
    ("order_to_ship_days", pa.int32()),
    ("share_of_order", pa.float64()),
])


def expected_totals(sf: float, parts: int, root: Optional[Path] = None) -> dict[str, float]:
    """Row count and summed charge of the whole output, computed directly in one process
    (pyarrow read of every part, pandas arithmetic, no distetl): the reference for tests."""
    folder = ensure_tpch(sf, parts, root)
    lineitem = pd.concat([read_part(str(folder / "lineitem" / f"lineitem.{i}.parquet"), LINEITEM_COLUMNS)
                          for i in range(1, parts + 1)], ignore_index=True)
    orders = pd.concat([read_part(str(folder / "orders" / f"orders.{i}.parquet"), ["o_orderkey"])
                        for i in range(1, parts + 1)], ignore_index=True)
    matched = lineitem[lineitem["l_orderkey"].isin(orders["o_orderkey"])]
    charge = matched["l_extendedprice"] * (1.0 - matched["l_discount"]) * (1.0 + matched["l_tax"])
    return {"rows": float(len(matched)), "charge": float(charge.sum())}


pipeline = Pipeline(
    name="tpch",
    plan=TpchParts(sf=1.0, parts=16),
    extract=extract,
    transform=transform,
    target="{output}/tpch/lineitem_priced/part={part}/part-0.parquet",
    schema=SCHEMA,
    compression="zstd",
    description="TPC-H lineitem priced (Q1 columns) and joined with orders, one file per part",
)
