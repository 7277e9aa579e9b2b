"""Chains: a stage whose every chunk reads its own previous chunk (a running total).

Same per-link function (:mod:`chain_workload`) in every variant, each variant in a fresh
process:

* ``distetl``: one chain of 1,000 tiny links, ``Input("chain", Previous())``, on the
  local runner (2 workers): distetl runs it as segments of up to ``CHAIN_SEGMENT`` (256)
  links, one batch each, in order on one worker;
* ``luigi``: the same chain as one Luigi task per link requiring the previous link's
  task, ``local_scheduler=True``, 1 worker: each task runs in the driver's process,
  Luigi's fastest way through a chain (:func:`chain_workload.run_luigi_chain`);
* ``luigi_2_workers``: the same with 2 workers, the shape of the ``stages`` workload's
  Luigi variant: Luigi then forks a process per task (quick mode: the first 300 links,
  ``Sizes.chain_luigi2_links``);
* ``distetl_1_chain``, ``distetl_3_chains``: a ``Product`` of the 1,000 days × 1 value
  and × 3 values with ``Previous(per="series")``: one chain vs three chains of 1,000
  side by side, on 2 workers.

**Link latency** = start of link N+1 − end (after its commit) of link N, wall clock:
distetl's from the run's per-chunk records (``ChunkResult.started``/``ended``), Luigi's
from the same two instants its tasks write. The median is the check; the 90th
percentile, the maximum and the links over 50 ms (distetl: the hand-offs between
segments, a Prefect task each) are figures.

Checks: distetl's median link latency ≤ 10 ms; three chains of 1,000 on 2 workers / one
chain of 1,000 (phase: cluster up) ≤ 1.3. The second cannot hold on 2 single-threaded
workers when the links' own work dominates: three chains need three workers' worth of
time, at best 1.5× one chain's on two (see the xfail's reason for the measured figures).
"""

from __future__ import annotations

import pytest

from benchlib import discard, measure
from chain_workload import distetl_links, latency_summary, luigi_links, totals

NAME = "chain"
LINKS = 1_000
CHAINS = 3
LATENCY_MS = 10.0
PARALLEL_RATIO = 1.3


def _total(days: int) -> int:
    return days * (days + 1) // 2


def _ms(s: dict) -> str:
    return f"{s['median_ms']:.2f} / {s['p90_ms']:.2f} / {s['max_ms']:.1f}"


def test_chain_link_latency(bench, sizes, bench_root, prefect_server):
    spec = {"name": NAME, "kind": "chain", "days": LINKS, "root": str(bench_root)}
    links2 = min(sizes.chain_luigi2_links or LINKS, LINKS)
    dist = bench.add(measure(spec, "distetl"))
    luigi = bench.add(measure(spec, "luigi_chain", label="luigi", workers=1))
    luigi2 = bench.add(measure({**spec, "days": links2}, "luigi_chain", label="luigi_2_workers", workers=2))

    for m, links in ((dist, LINKS), (luigi, LINKS), (luigi2, links2)):
        assert m.failed == 0 and m.written == links, (m.variant, m.written, m.notes.get("first_error"),
                                                      m.notes.get("luigi_status"))
        assert totals(m.notes["output"]) == {"": (links, _total(links))}, m.variant
    assert luigi.notes["scheduling_succeeded"] and luigi2.notes["scheduling_succeeded"], luigi.notes

    info, dist_lat = distetl_links(dist.notes["output"])
    assert info["chunks"] == LINKS and len(dist_lat) == LINKS - 1, info
    d = latency_summary(dist_lat)
    lu_info, lu_lat = luigi_links(luigi.notes["output"])
    lu2_info, lu2_lat = luigi_links(luigi2.notes["output"])
    lu, lu2 = latency_summary(lu_lat), latency_summary(lu2_lat)
    assert lu["links"] == LINKS - 1 and lu2["links"] == links2 - 1, (lu, lu2)

    def fig(label: str, value: object) -> None:
        bench.figure(NAME, label, value)

    fig("links", LINKS)
    fig("distetl s (wall / cluster up)", f"{dist.wall_s:.2f} / {dist.phase_s:.2f}")
    fig("distetl link ms (its own work)", round(info["compute_s"] / LINKS * 1000, 3))
    fig("distetl link latency ms (median / p90 / max)", _ms(d))
    fig("distetl segment hand-offs (links over 50 ms: count, mean ms)", f"{d['over_50ms']}, {d['over_50ms_mean_ms']}")
    fig("distetl link latency s summed", d["sum_s"])
    fig("distetl workers used", info["workers"])
    fig("Luigi 2 workers links", links2)
    for label, m, s, i, n in (("Luigi 1 worker", luigi, lu, lu_info, LINKS),
                              ("Luigi 2 workers", luigi2, lu2, lu2_info, links2)):
        fig(f"{label} s", round(m.wall_s, 2))
        fig(f"{label} link ms (its own work)", round(i["compute_s"] / n * 1000, 3))
        fig(f"{label} link latency ms (median / p90 / max)", _ms(s))
        fig(f"{label} link latency s summed", s["sum_s"])
    for m, s in ((dist, d), (luigi, lu), (luigi2, lu2)):
        m.notes["link_latency"] = s
        discard(m)

    check = bench.check(NAME, "distetl median link latency, ms (commit of link N -> start of N+1)",
                        d["median_ms"], "<=", LATENCY_MS,
                        f"(p90 {d['p90_ms']:.2f} ms, max {d['max_ms']:.0f} ms; Luigi median {lu['median_ms']:.2f} ms "
                        f"on 1 worker, {lu2['median_ms']:.1f} ms on 2; {LINKS} links in {dist.wall_s:.1f} s vs "
                        f"Luigi's {luigi.wall_s:.1f} s, and {luigi2.wall_s:.1f} s for {links2} on 2 workers)")
    assert check.passed, check.line()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "3 chains of 1,000 on 2 single-threaded workers cannot take <= 1.3x one chain: the links' own work needs 3 "
    "workers' worth of time, so 1.5x at best. Measured (quick mode, 2 cores, three sessions), cluster up: "
    "6.39 s / 3.83 s = 1.67x, 6.56 s / 3.97 s = 1.65x, 6.74 s / 3.94 s = 1.71x; the floor from the links' own "
    "seconds (3 chains' / 2 workers over 1 chain's) 1.64x, 1.58x, 1.65x"))
def test_chains_run_side_by_side(bench, bench_root, prefect_server):
    spec = {"name": f"{NAME}_parallel", "kind": "chain", "days": LINKS, "root": str(bench_root)}
    one = bench.add(measure({**spec, "values": 1}, "distetl", label="distetl_1_chain"))
    three = bench.add(measure({**spec, "values": CHAINS}, "distetl", label=f"distetl_{CHAINS}_chains"))
    for m, chains in ((one, 1), (three, CHAINS)):
        assert m.failed == 0 and m.written == LINKS * chains, (m.variant, m.written, m.notes.get("first_error"))
        assert totals(m.notes["output"]) == {f"s{i}": (LINKS, _total(LINKS)) for i in range(chains)}, m.variant
    one_info, one_lat = distetl_links(one.notes["output"])
    three_info, three_lat = distetl_links(three.notes["output"])
    a, b = latency_summary(one_lat), latency_summary(three_lat)
    assert a["links"] == LINKS - 1 and b["links"] == CHAINS * (LINKS - 1), (a, b)

    def fig(label: str, value: object) -> None:
        bench.figure(f"{NAME}_parallel", label, value)

    fig("1 chain s (wall / cluster up)", f"{one.wall_s:.2f} / {one.phase_s:.2f}")
    fig(f"{CHAINS} chains s (wall / cluster up)", f"{three.wall_s:.2f} / {three.phase_s:.2f}")
    fig(f"links' own s (1 chain / {CHAINS} chains)", f"{one_info['compute_s']:.2f} / {three_info['compute_s']:.2f}")
    fig(f"workers used (1 chain / {CHAINS} chains)", f"{one_info['workers']} / {three_info['workers']}")
    fig(f"link latency median ms (1 chain / {CHAINS} chains)", f"{a['median_ms']:.2f} / {b['median_ms']:.2f}")
    # The floor on 2 single-threaded workers: the chains' own seconds spread over both
    # workers, against one chain's own seconds.
    floor = (three_info["compute_s"] / 2) / one_info["compute_s"]
    fig(f"floor on 2 workers ({CHAINS} chains' own s / 2 over 1 chain's)", round(floor, 3))
    for m in (one, three):
        discard(m)

    check = bench.check(f"{NAME}_parallel", f"{CHAINS} chains of {LINKS} / 1 chain (cluster up, 2 workers)",
                        three.phase_s / one.phase_s, "<=", PARALLEL_RATIO,
                        f"({three.phase_s:.2f} s vs {one.phase_s:.2f} s; the floor on 2 workers: {floor:.2f}; "
                        "expected to fail: xfail)")
    assert check.passed, check.line()
