"""Collect benchmark measurements; print them as a table, save JSON and a PNG chart.

Derived figures, per workload (definitions also in ``benchmarks/results/README.md``):

* ``wall s``: end to end, as the user calls it, LocalCluster start and close included.
* ``phase s``: wall minus the time inside LocalCluster start and close (the same phase
  for every variant; equal to wall for the loop and the sequential baseline). Every
  figure below is computed from it.
* ``speedup``: the sequential baseline's phase time / the variant's (``e2e``: the same
  with wall times).
* ``ms/chunk``: phase / chunks. ``vs raw``: that per-chunk time / raw Dask's on the
  same chunks in the same session (both measured, so the ratio is never negative; an
  "overhead" = phase − a loop-based ideal came out negative on tiny chunks, where the
  loop's own time varies ±40 %, and is no longer derived).
* Sampled variants (naive Prefect on large workloads) ran the first K of N chunks;
  ``est. phase`` scales their phase time by N / K.

Every check's value and every derived difference a workload reports goes through
:func:`non_negative`, which fails the benchmark loudly instead of letting a negative
figure pass a ``<=`` check.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from benchlib import WORKERS, Measurement

__all__ = ["Bench", "Check", "CheckFailed", "non_negative", "per_chunk_ratio"]

VARIANT_ORDER = ["loop", "sequential", "distetl", "raw_dask", "naive_prefect", "dask_dataframe"]


def non_negative(value: Optional[float], what: str, fix: str = "") -> float:
    """``value`` if it is a finite number ≥ 0; otherwise fail the benchmark at once.

    A time, a size, a ratio of two of them or a cost (a time minus the part of it that is
    not the cost) is never negative; one that comes out negative means the measurement
    subtracted the wrong thing (a baseline slower than what it is subtracted from), and a
    ``<=`` check on it could not fail.

    Raises:
        AssertionError: If ``value`` is None, NaN, infinite or negative.
    """
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AssertionError(
            f"Expected {what} to be a finite number >= 0; got {value!r}. Fix: "
            + (fix or "measure the figure directly (a ratio of two measured times) instead of "
                      "as a difference from a baseline measured apart"))
    return float(value)


def per_chunk_ratio(m: Measurement, ref: Measurement) -> float:
    """``m``'s phase time per chunk / ``ref``'s (both measured; sampled runs per chunk
    of their sample). Never negative: both are measured durations."""
    mine = non_negative(m.s_per_chunk, f"{m.workload}/{m.variant} s per chunk")
    theirs = non_negative(ref.s_per_chunk, f"{ref.workload}/{ref.variant} s per chunk")
    if theirs == 0:
        raise AssertionError(f"Expected {ref.workload}/{ref.variant} to have run chunks in a measured time; got "
                             f"{ref.chunks} chunks in {ref.phase_s} s. Fix: check that variant's run.")
    return mine / theirs


class CheckFailed(AssertionError):
    """A recorded check that did not pass (raised with :meth:`Check.line`), apart from
    the harness's other assertions, so an expected failure can name it alone."""


@dataclass
class Check:
    """One ratio the benchmarks assert."""

    workload: str
    name: str
    value: float
    op: str
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "name": self.name, "value": round(self.value, 4),
                "op": self.op, "threshold": self.threshold, "passed": self.passed, "detail": self.detail}

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"[{mark}] {self.workload}: {self.name} = {self.value:.3g} (needs {self.op} {self.threshold:g}) {self.detail}"


def machine() -> dict[str, Any]:
    """The machine and library versions the figures come from."""
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        memory = None
    versions = {}
    for name in ("distetl", "prefect", "prefect-dask", "dask", "distributed", "pandas", "pyarrow", "s3fs", "moto",
                 "luigi"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": memory, "niceness": os.nice(0),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


@dataclass
class Bench:
    """Everything one ``pytest benchmarks/`` session measured."""

    mode: str
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    load_start: tuple[float, ...] = field(default_factory=os.getloadavg)

    def add(self, m: Measurement) -> Measurement:
        """Record a measurement (and return it)."""
        self.measurements.append(m)
        return m

    def check(self, workload: str, name: str, value: float, op: str, threshold: float, detail: str = "") -> Check:
        """Record a ratio check (and return it; the test asserts ``check.passed``).

        Raises:
            AssertionError: If ``value`` is negative, NaN or infinite (see
                :func:`non_negative`): such a check could not mean what it says.
        """
        non_negative(value, f"the value of check {workload}: {name}")
        c = Check(workload, name, value, op, threshold, detail)
        self.checks = [x for x in self.checks if (x.workload, x.name) != (workload, name)] + [c]
        return c

    def figure(self, workload: str, name: str, value: Any) -> None:
        """Record a scalar figure (a rerun time, a cluster start time, …)."""
        self.figures.setdefault(workload, {})[name] = value

    # -- derived ---------------------------------------------------------------------

    def of(self, workload: str, variant: str) -> Optional[Measurement]:
        found = [m for m in self.measurements if m.workload == workload and m.variant == variant]
        return found[-1] if found else None

    def workloads(self) -> list[str]:
        seen: list[str] = []
        for m in self.measurements:
            if m.workload not in seen:
                seen.append(m.workload)
        return seen

    def est_phase(self, m: Measurement) -> float:
        """Phase time for all chunks (extrapolated for a sampled run)."""
        if not m.sample_of:
            return m.phase_s
        return m.phase_s * m.sample_of / m.chunks

    def rows(self) -> list[dict[str, Any]]:
        """One row per measurement, with the derived figures."""
        out = []
        for workload in self.workloads():
            seq = self.of(workload, "sequential")
            raw = self.of(workload, "raw_dask")
            ms = [m for m in self.measurements if m.workload == workload]
            ms.sort(key=lambda m: VARIANT_ORDER.index(m.variant) if m.variant in VARIANT_ORDER else 99)
            for m in ms:
                phase = self.est_phase(m)
                rerun = m.written == 0 and bool(m.notes.get("skipped"))
                vs_raw = per_chunk_ratio(m, raw) if raw and raw.chunks and m.chunks and not rerun else None
                out.append({
                    "workload": workload, "variant": m.variant,
                    "chunks": f"{m.chunks}" + (f"/{m.sample_of}" if m.sample_of else ""),
                    "wall_s": m.wall_s, "phase_s": m.phase_s, "est_phase_s": phase if m.sample_of else None,
                    "rows_per_s": m.rows_per_s, "mb_per_s": m.mb_per_s,
                    "speedup": (seq.phase_s / phase) if seq and phase and not rerun else None,
                    "e2e_speedup": (seq.wall_s / m.wall_s) if seq and m.wall_s and not (m.sample_of or rerun) else None,
                    "ms_per_chunk": m.s_per_chunk * 1000,
                    "per_chunk_vs_raw": vs_raw,
                    "cluster_s": m.cluster_s,
                    "driver_mb": m.driver_peak_mb,
                    "worker_mb": list(m.worker_peak_mb),
                    "workers_seen": len(m.worker_peak_mb),
                    "other_cores": m.notes.get("other_cores"),
                    "service_cores": m.notes.get("service_cores"),
                    "foreign_cores": m.notes.get("foreign_cores"),
                    "failed": m.failed,
                })
        return out

    # -- output ------------------------------------------------------------------------

    def table(self) -> str:
        """The results as a fixed-width text table, then the figures and the checks."""
        head = ["workload", "variant", "chunks", "wall s", "cluster s", "phase s", "est. phase", "rows/s",
                "MB/s", "speedup", "e2e", "ms/chunk", "vs raw", "driver MB", "each worker MB",
                "service cores", "foreign cores"]

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines = []
        for r in self.rows():
            lines.append([
                r["workload"], r["variant"], r["chunks"], f(r["wall_s"], ".2f"), f(r["cluster_s"], ".2f"),
                f(r["phase_s"], ".2f"), f(r["est_phase_s"], ".1f"), f(r["rows_per_s"], ",.0f"),
                f(r["mb_per_s"], ".2f"), f(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                f(r["e2e_speedup"], ".2f") + ("x" if r["e2e_speedup"] else ""),
                f(r["ms_per_chunk"], ".2f"), f(r["per_chunk_vs_raw"], ".2f"),
                f(r["driver_mb"], ".0f"), "/".join(f"{x:.0f}" for x in r["worker_mb"]) or "-", f(r["service_cores"], ".3f"),
                f(r["foreign_cores"], ".2f"),
            ])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)] if lines else [len(h) for h in head]
        text = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        text.append("  ".join("-" * w for w in widths))
        for line in lines:
            text.append("  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths))))
        if self.figures:
            text.append("")
            for workload, figs in self.figures.items():
                text.append(f"{workload}: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in figs.items()))
        if self.checks:
            text.append("")
            text.extend(c.line() for c in self.checks)
        info = machine()
        text.append("")
        text.append(f"mode {self.mode}; {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB; "
                    f"niceness {info['niceness']}; load average at start {self.load_start[0]:.2f}, "
                    f"at end {os.getloadavg()[0]:.2f}; 'service cores': CPU the session's Prefect server "
                    "(and S3 server) used during the variant (a cost of the variant); 'foreign cores': CPU other "
                    "programs used meanwhile (noise)")
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "started": self.started,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "load_average": {"start": self.load_start, "end": os.getloadavg()},
            "workers": WORKERS,
            "measurements": [m.to_dict() for m in self.measurements],
            "derived": self.rows(), "figures": self.figures,
            "checks": [c.to_dict() for c in self.checks],
        }

    def save(self, folder: Path) -> list[Path]:
        """Write ``latest.json``, ``latest.png`` and a time-stamped copy of the JSON."""
        folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(), indent=1, default=str)
        stamp = self.started.replace(":", "").replace("-", "").replace("+0000", "Z")
        paths = [folder / "latest.json", folder / f"bench-{self.mode}-{stamp}.json"]
        for path in paths:
            path.write_text(data)
        chart = folder / "latest.png"
        if self.chart(chart):
            paths.append(chart)
        return paths

    def chart(self, path: Path) -> bool:
        """Bar charts per workload: phase seconds (extrapolated where sampled; cluster
        start/close stacked on top, hatched) and speedup over the sequential baseline.
        Returns False if matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        rows = self.rows()
        workloads = [w for w in self.workloads() if any(r["workload"] == w for r in rows)]
        if not workloads:
            return False
        fig, axes = plt.subplots(len(workloads), 1, figsize=(9, 2.3 * len(workloads) + 0.8), squeeze=False)
        colors = {"loop": "#999999", "sequential": "#6b6ecf", "distetl": "#2ca02c", "raw_dask": "#1f77b4",
                  "naive_prefect": "#d62728", "dask_dataframe": "#ff7f0e", "luigi": "#8c564b"}
        for ax, workload in zip(axes[:, 0], workloads):
            mine = [r for r in rows if r["workload"] == workload]
            names = [r["variant"] for r in mine]
            phases = [r["est_phase_s"] or r["phase_s"] for r in mine]
            cluster = [0.0 if r["est_phase_s"] else (r["cluster_s"] or 0.0) for r in mine]
            palette = [next((c for k, c in colors.items() if n.startswith(k)), "#777777") for n in names]
            bars = ax.barh(names, phases, color=palette)
            ax.barh(names, cluster, left=phases, color="none", edgecolor="#555555", hatch="//", linewidth=0.5)
            ax.invert_yaxis()
            ax.set_title(workload, fontsize=10, loc="left")
            for bar, r, extra in zip(bars, mine, cluster):
                label = f"{(r['est_phase_s'] or r['phase_s']):.1f}s" + ("*" if r["est_phase_s"] else "")
                if r["speedup"]:
                    label += f"  {r['speedup']:.2f}x seq"
                ax.text(bar.get_width() + extra, bar.get_y() + bar.get_height() / 2, " " + label, va="center",
                        fontsize=8)
            totals = [p + c for p, c in zip(phases, cluster)]
            # Log scale when an extrapolated naive run would flatten every other bar
            # (reruns, near zero by design, do not count).
            positive = [t for t, r in zip(totals, mine) if t > 0 and "rerun" not in r["variant"]]
            log = bool(positive) and max(positive) / min(positive) > 20
            if log:
                ax.set_xscale("log")
                ax.set_xlim(min(t for t in totals if t > 0) / 2, max(positive) * 8)
            else:
                ax.set_xlim(0, max(totals) * 1.45 if totals else 1)
            ax.set_xlabel("seconds with the cluster up (hatched: LocalCluster start + close; * = extrapolated "
                          "from a sample; lower is better" + ("; log scale" if log else "") + ")", fontsize=7)
            ax.tick_params(labelsize=8)
        info = machine()
        fig.suptitle(f"distetl benchmarks ({self.mode}) · {info['cpus']} CPUs · {WORKERS} workers × 1 thread",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
