"""Run one benchmark variant in a fresh process: ``python runvariant.py SPEC_JSON``.

Prints ``BENCH-RESULT {json}`` (see :func:`benchlib.measure`). The ``__main__`` guard
matters: Dask's spawned worker processes re-import this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent / "flows"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def main(argv: list[str]) -> int:
    """Build the workload, run the variant, print the measurement."""
    import benchlib
    import workloads

    spec = json.loads(argv[1])
    workload = workloads.make_workload(spec["workload"])
    benchlib.emit(benchlib.run_variant(workload, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
