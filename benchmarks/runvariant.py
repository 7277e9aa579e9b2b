"""Run one benchmark variant in a fresh process: ``python runvariant.py SPEC_JSON``.

Prints ``BENCH-RESULT {json}`` (see :func:`benchlib.measure`). The ``__main__`` guard
matters: Dask's spawned worker processes re-import this file.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent / "flows"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


#: Modules each variant needs, imported before its clock starts: no variant is timed
#: importing its libraries (a CLI user pays that once per process, not per chunk).
PRELOAD = {
    "loop": (),
    "sequential": ("distetl.engine.flow", "prefect.flow_engine", "prefect.task_engine"),
    "distetl": ("distetl.engine.flow", "prefect.flow_engine", "prefect.task_engine", "prefect_dask", "distributed"),
    "raw_dask": ("distributed",),
    "naive_prefect": ("naive", "prefect.flow_engine", "prefect.task_engine", "prefect_dask", "distributed"),
    "dask_dataframe": ("dask.dataframe", "distributed"),
    "distetl_by_stage": ("distetl.engine.flow", "prefect.flow_engine", "prefect.task_engine", "prefect_dask", "distributed"),
    "luigi": ("luigi", "luigi_stages"),
    "luigi_chain": ("luigi", "chain_workload"),
}


def main(argv: list[str]) -> int:
    """Build the workload, import what the variant needs, run it, print the measurement."""
    import benchlib
    import workloads

    spec = json.loads(argv[1])
    for module in PRELOAD.get(spec["variant"], ()):
        importlib.import_module(module)
    workload = workloads.make_workload(spec["workload"])
    benchlib.emit(benchlib.run_variant(workload, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
