"""Mappings between the chunks of two stages: which upstream chunks each chunk reads.

A downstream stage declares one upstream stage and a :class:`Mapping`. The mapping
answers two questions, one method each (after Dagster's partition mappings):

* :meth:`Mapping.upstream_keys`: which upstream chunks does this downstream chunk read?
* :meth:`Mapping.downstream_chunks`: when the downstream stage has no plan of its own,
  which chunks does it have, given the upstream stage's chunks?

:func:`resolve_inputs` turns the first answer into upstream chunk indexes for a whole
stage at plan time, and reports keys the upstream stage does not have.

The upstream stage is seen through :class:`UpstreamKeys`, a read-only view of its keys
(key to index, plus the ordered key list), built once per stage. Mappings only use its
``in``, ``len``, :meth:`~UpstreamKeys.keys` and :meth:`~UpstreamKeys.index_of`, so a
caller may pass any object with those four.

Day chunks are keyed ``date=YYYY-MM-DD`` with fields ``date``, ``year``, ``month``
(``YYYY-MM``) and ``day``, as :class:`distetl.model.plans.DateRange` makes them. Mappings
that read upstream *days* from a window (:class:`CalendarWindow`,
:class:`TrailingDays`) look them up by that key; :class:`CalendarWindow` reads hours,
months and quarters by their keys too (``hour=…``, ``month=…``, ``quarter=…``; see
:mod:`distetl.model.periods`).

Product keys (``date=2024-01-03/origin=EWR``, :class:`distetl.model.plans.Product`) are
mapped along one dimension by :class:`Along` and lose one by :class:`Collapse`
(:mod:`distetl.model.mappings.dims`).

This module is plain Python: it imports no Prefect, Dask, pandas or pyarrow.
"""

from distetl.model.mappings.base import UpstreamKeys, Mapping
from distetl.model.mappings.basic import AllChunks, AllToOne, FromFunction, Identity
from distetl.model.mappings.calendar import CalendarWindow, TrailingDays, WindowDays
from distetl.model.mappings.dims import Along, Collapse
from distetl.model.mappings.history import Previous
from distetl.model.mappings.resolve import resolve_inputs

__all__ = [
    "AllChunks",
    "AllToOne",
    "Along",
    "CalendarWindow",
    "Collapse",
    "FromFunction",
    "Identity",
    "Mapping",
    "Previous",
    "TrailingDays",
    "UpstreamKeys",
    "WindowDays",
    "resolve_inputs",
]
