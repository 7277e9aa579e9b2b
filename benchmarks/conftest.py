"""Benchmark session: one Prefect API server, the mode's sizes, and the final report.

``pytest benchmarks/`` runs the quick mode (~11 minutes on 2 cores);
``pytest benchmarks/ --bench-full`` (or ``DISTETL_BENCH=full``) the full sizes. At the
end of the session the results are printed as a table and saved under
``benchmarks/results/`` (``latest.json``, ``latest.png``, a time-stamped JSON).

On a machine shared with other work, the session raises its own CPU priority
(``DISTETL_BENCH_NICE``, default -10; 0 leaves it alone) where it is allowed to (root
or CAP_SYS_NICE), so other programs take fewer of the cores the parallel variants
need. Every process of the session inherits it: the variants, their Dask workers and
the Prefect server alike. The report states the niceness it ran at.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports prefect: a private home, no telemetry, quiet logs.
_HOME = Path(tempfile.mkdtemp(prefix="distetl-bench-"))
REPO = Path(__file__).resolve().parents[1]
os.environ["PREFECT_HOME"] = str(_HOME / "prefect-client")
os.environ["DISTETL_HOME"] = str(_HOME / "distetl")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.setdefault("DISTETL_TPCH_CACHE", str(REPO / ".distetl" / "tpch"))
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("DISTETL_SCHEDULER", None)
# A run without PREFECT_API_URL stops its own server with the run; fixed_cost measures
# the default (a kept server) and stops it after.
os.environ["DISTETL_KEEP_SERVER"] = "0"
try:
    os.nice(int(os.environ.get("DISTETL_BENCH_NICE", "-10")) - os.nice(0))
except (PermissionError, ValueError):
    pass
# The flows are imported as plain modules, so Dask workers (which inherit sys.path)
# import them by reference in every variant.
for _path in (str(REPO / "flows"), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pytest  # noqa: E402

from distetl.engine.prefect_api import EmbeddedServer  # noqa: E402
from benchlib import SERVICE_PIDS_ENV  # noqa: E402
from report import Bench  # noqa: E402
from workloads import FULL, QUICK, Sizes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
_BENCH: list[Bench] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-full", action="store_true", default=False,
                     help="distetl benchmarks: full sizes (SF 10, tens of thousands of chunks)")


def _full(config: pytest.Config) -> bool:
    return bool(config.getoption("--bench-full")) or os.environ.get("DISTETL_BENCH", "").lower() == "full"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Full sizes run far past the default per-test timeout; in quick mode a module may
    # ask for more than 900 s (``QUICK_TIMEOUT_S``: the scale workload on a busy machine).
    full = _full(config)
    for item in items:
        if "benchmarks" in str(item.fspath):
            limit = 0 if full else max(900, getattr(getattr(item, "module", None), "QUICK_TIMEOUT_S", 900))
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture(scope="session")
def sizes(pytestconfig: pytest.Config) -> Sizes:
    """The workload sizes of this session's mode."""
    return FULL if _full(pytestconfig) else QUICK


@pytest.fixture(scope="session")
def bench(sizes: Sizes) -> Bench:
    """The session's collector of measurements, figures and checks."""
    collector = Bench(mode=sizes.mode)
    _BENCH.append(collector)
    return collector


def _warm_up(url: str) -> None:
    """Make the server's one-time work happen before any variant is timed: its first
    ``/admin/version`` (which every new Prefect client asks) takes ~0.5 s, and the
    first flow run creates the database rows every later run reuses."""
    import urllib.request

    from prefect import flow

    with urllib.request.urlopen(f"{url}/admin/version", timeout=60) as resp:
        resp.read()

    @flow(name="distetl-bench-warm-up", persist_result=False)
    def warm_up() -> int:
        return 1

    warm_up()


@pytest.fixture(scope="session")
def prefect_server() -> EmbeddedServer:
    """One real Prefect API server (subprocess on 127.0.0.1) for the session, warmed up."""
    server = EmbeddedServer(_HOME / "server")
    url = server.start()
    os.environ["PREFECT_API_URL"] = url
    services = [os.getpid()] + ([server.process.pid] if server.process is not None else [])
    os.environ[SERVICE_PIDS_ENV] = ",".join(str(pid) for pid in services)
    _warm_up(url)
    yield server
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop(SERVICE_PIDS_ENV, None)
    server.stop()


@pytest.fixture(scope="session")
def exclude(prefect_server: EmbeddedServer) -> list[int]:
    """Processes that are not Dask workers (the Prefect server), for peak-RSS sampling."""
    return [prefect_server.process.pid] if prefect_server.process else []


@pytest.fixture(scope="session")
def bench_root() -> Path:
    """Where the variants write their outputs (removed at the end)."""
    root = _HOME / "out"
    root.mkdir(parents=True, exist_ok=True)
    return root


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _BENCH or not _BENCH[0].measurements:
        return
    bench = _BENCH[0]
    paths = bench.save(RESULTS)
    terminalreporter.section(f"distetl benchmarks ({bench.mode})")
    terminalreporter.write_line(bench.table())
    terminalreporter.write_line("")
    for path in paths:
        terminalreporter.write_line(f"saved {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # After the session fixtures (the Prefect server) are torn down: the outputs and
    # the session's Prefect database go; benchmarks/results/ stays.
    import shutil

    shutil.rmtree(_HOME, ignore_errors=True)
