"""TPC-H revenue per nation and order year: a graph of stages with a join.

Source: TPC-H ``lineitem``, ``orders``, ``customer`` and ``nation`` tables generated with
``tpchgen-cli`` as Parquet (by :func:`flows.tpch.ensure_tpch`, into the same cache folder
as ``flows/tpch.py``: ``$DISTETL_TPCH_CACHE``, else ``.distetl/tpch`` under
``$DISTETL_HOME``), ``parts`` files per big table.

Stages::

    lineitem  (one chunk per part)  ─┐
    orders    (one chunk per part)  ─┤
    customer  (one chunk)  ─AllChunks┤
    nation    (one chunk)  ─AllChunks┴─> revenue_part (one chunk per part)
                                          └─AllToOne─> revenue_nation_year (one chunk)

- ``lineitem`` and ``orders`` copy their part (the columns the query needs, plain types).
  ``tpchgen-cli`` cuts both tables by order key, so lineitem part *i* holds exactly the
  line items of orders part *i*.
- ``customer`` and ``nation`` read every generated file of their table. The files are
  declared as ``sources=``, so replacing them makes the stage stale (and every reader
  after it). A declared source is a fixed path or glob, and the cache folder depends on
  ``--sf`` and ``--parts``, so the globs cover every scale factor in the cache root:
  generating another scale factor into the same cache makes ``customer`` and ``nation``
  stale too (a redo of two one-chunk stages and what reads them; never a missed change).
- ``revenue_part``: one part's line items joined with its orders, every customer and
  every nation; revenue (``sum(l_extendedprice * (1 - l_discount))``) per nation and
  order year.
- ``revenue_nation_year``: every ``revenue_part`` summed into one row per nation and year.

Run it::

    distetl run flows/tpch_graph.py --output ./output --sf 0.1 --parts 4
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import pandas as pd
import pyarrow as pa

from distetl import AllChunks, AllToOne, Chunk, Input, Pipeline, Plan, PlanError, Stage
from distetl.engine.loader import load_pipeline

#: The generation helpers of flows/tpch.py, loaded from the flow file beside this one
#: (and shipped to workers with this file).
_TPCH = sys.modules[load_pipeline(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpch.py"))
                    .extract.__module__]
cache_dir, ensure_tpch, read_part = _TPCH.cache_dir, _TPCH.ensure_tpch, _TPCH.read_part

__all__ = ["GraphParts", "TableWhole", "TABLES", "pipeline", "revenue_query"]

TABLES = ("lineitem", "orders", "customer", "nation")
LINEITEM = ["l_orderkey", "l_linenumber", "l_extendedprice", "l_discount"]
ORDERS = ["o_orderkey", "o_custkey", "o_orderdate"]
CUSTOMER = ["c_custkey", "c_nationkey", "c_mktsegment"]
NATION = ["n_nationkey", "n_name", "n_regionkey"]


def _check(sf: float, parts: int) -> None:
    if sf <= 0 or parts < 1:
        raise PlanError("--sf above 0 and --parts 1 or more", f"sf={sf}, parts={parts}",
                        "pass e.g. --sf 0.1 --parts 4")


@dataclass(frozen=True)
class GraphParts(Plan):
    """One chunk per generated part: key ``part=001``, fields ``part``, ``lineitem``,
    ``orders`` (file paths). Generates the four tables at plan time if the cache lacks
    them.

    Attributes:
        sf: Scale factor (``--sf``).
        parts: Parts per big table (``--parts``).
    """

    sf: float = 0.1
    parts: int = 4

    kind: ClassVar[str] = "tpch"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> list[Chunk]:
        _check(self.sf, self.parts)
        folder = ensure_tpch(self.sf, self.parts, tables=TABLES)
        width = max(3, len(str(self.parts)))
        return [Chunk(key=f"part={i:0{width}d}",
                      fields={"part": f"{i:0{width}d}",
                              "lineitem": str(folder / "lineitem" / f"lineitem.{i}.parquet"),
                              "orders": str(folder / "orders" / f"orders.{i}.parquet")},
                      index=i - 1)
                for i in range(1, self.parts + 1)]


@dataclass(frozen=True)
class TableWhole(Plan):
    """One chunk for a whole generated table: key ``table=<name>``, field ``folder``
    (the table's folder for this ``--sf`` and ``--parts``). Subclasses name the table.

    Attributes:
        sf: Scale factor (``--sf``).
        parts: Parts per big table (``--parts``).
    """

    sf: float = 0.1
    parts: int = 4

    kind: ClassVar[str] = "tpch"
    table: ClassVar[str] = ""

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> list[Chunk]:
        _check(self.sf, self.parts)
        folder = ensure_tpch(self.sf, self.parts, tables=TABLES) / self.table
        return [Chunk(key=f"table={self.table}", fields={"table": self.table, "folder": str(folder)}, index=0)]


@dataclass(frozen=True)
class CustomerTable(TableWhole):
    """The whole ``customer`` table as one chunk."""

    table: ClassVar[str] = "customer"


@dataclass(frozen=True)
class NationTable(TableWhole):
    """The whole ``nation`` table as one chunk."""

    table: ClassVar[str] = "nation"


def lineitem(chunk: Chunk) -> pd.DataFrame:
    """The part's line items (the columns the query needs)."""
    return read_part(chunk["lineitem"], LINEITEM)


def orders(chunk: Chunk) -> pd.DataFrame:
    """The part's orders (the columns the query needs)."""
    return read_part(chunk["orders"], ORDERS)


def _declared_files(chunk: Chunk, ctx: Any, source: str) -> list[str]:
    """The declared source's files in this run's table folder (the glob covers every
    scale factor in the cache)."""
    folder = Path(chunk["folder"])
    files = sorted(f for f in ctx.sources[source] if Path(f).parent == folder)
    if not files:
        raise FileNotFoundError(
            f"Expected the declared source {source!r} to list files in {folder}; got none of "
            f"{len(ctx.sources[source])} files. Fix: regenerate the cache (delete {folder.parent}).")
    return files


def customer(chunk: Chunk, ctx: Any) -> pd.DataFrame:
    """Every customer file, as one table."""
    return pd.concat([read_part(f, CUSTOMER) for f in _declared_files(chunk, ctx, "customer")],
                     ignore_index=True)


def nation(chunk: Chunk, ctx: Any) -> pd.DataFrame:
    """The nation file."""
    return pd.concat([read_part(f, NATION) for f in _declared_files(chunk, ctx, "nation")], ignore_index=True)


def revenue_query(items: pd.DataFrame, orders_: pd.DataFrame, customers: pd.DataFrame,
                  nations: pd.DataFrame) -> pd.DataFrame:
    """Revenue per nation and order year: the query itself, on plain pandas frames.

    Returns:
        Columns ``nation`` (str), ``year`` (int64), ``revenue`` (float64), sorted.
    """
    joined = (items.merge(orders_, left_on="l_orderkey", right_on="o_orderkey")
              .merge(customers, left_on="o_custkey", right_on="c_custkey")
              .merge(nations, left_on="c_nationkey", right_on="n_nationkey"))
    out = pd.DataFrame({
        "nation": joined["n_name"].astype(str),
        "year": pd.to_datetime(joined["o_orderdate"]).dt.year.astype("int64"),
        "revenue": joined["l_extendedprice"].astype("float64") * (1.0 - joined["l_discount"].astype("float64")),
    })
    out = out.groupby(["nation", "year"], as_index=False)["revenue"].sum()
    return out.sort_values(["nation", "year"]).reset_index(drop=True)


def revenue_part(chunk: Chunk, ctx: Any) -> pd.DataFrame:
    """One part's revenue per nation and order year."""
    return revenue_query(
        ctx.read_inputs("lineitem", ["l_orderkey", "l_extendedprice", "l_discount"]),
        ctx.read_inputs("orders", ORDERS),
        ctx.read_inputs("customer", ["c_custkey", "c_nationkey"]),
        ctx.read_inputs("nation", ["n_nationkey", "n_name"]),
    )


def revenue_nation_year(chunk: Chunk, ctx: Any) -> pd.DataFrame:
    """Every part's revenue summed per nation and year."""
    parts = ctx.read_inputs(columns=["nation", "year", "revenue"])
    out = parts.groupby(["nation", "year"], as_index=False)["revenue"].sum()
    return out.sort_values(["nation", "year"]).reset_index(drop=True)


REVENUE = pa.schema([("nation", pa.string()), ("year", pa.int64()), ("revenue", pa.float64())])
_CACHE = cache_dir()

pipeline = Pipeline(name="tpch_graph", stages=[
    Stage("lineitem", plan=GraphParts(), extract=lineitem,
          target="{output}/lineitem/part={part}/part-0.parquet"),
    Stage("orders", plan=GraphParts(), extract=orders, target="{output}/orders/part={part}/part-0.parquet"),
    Stage("customer", plan=CustomerTable(), extract=customer, target="{output}/customer/part-0.parquet",
          sources={"customer": str(_CACHE / "sf*-p*" / "customer" / "customer.*.parquet")}),
    Stage("nation", plan=NationTable(), extract=nation, target="{output}/nation/part-0.parquet",
          sources={"nation": str(_CACHE / "sf*-p*" / "nation" / "nation.*.parquet")}),
    Stage("revenue_part",
          inputs={"lineitem": "lineitem", "orders": "orders",
                  "customer": Input("customer", AllChunks()), "nation": Input("nation", AllChunks())},
          extract=revenue_part, target="{output}/revenue_part/part={part}/part-0.parquet", schema=REVENUE),
    Stage("revenue_nation_year", upstream="revenue_part", mapping=AllToOne(), extract=revenue_nation_year,
          target="{output}/revenue_nation_year/part-0.parquet", schema=REVENUE),
], description="TPC-H revenue per nation and order year: partitioned facts joined with one-chunk dimensions")
