"""Watching a run: the Dask dashboard and the Prefect flow run's page, printed as soon
as they exist, and recorded in the report (and so in the manifest and alerts).

* **Dask dashboard.** As soon as the run's cluster is up (local or remote), its
  dashboard link (``client.dashboard_link``; bokeh is a dependency) is printed as
  ``dashboard: http://127.0.0.1:PORT/status``. A local cluster's dashboard lives as long
  as the run.
* **Prefect flow run.** As soon as the flow run exists, its UI page is printed:
  ``{PREFECT_UI_URL or the API URL without /api}/runs/flow-run/{id}``. distetl's own
  embedded API (kept for later runs until idle, or per run) serves no UI; its records
  stay in its database (``$DISTETL_HOME/prefect``), which ``distetl ui`` serves (it
  takes over an idle kept server); or run against ``distetl cluster up``'s server
  (``PREFECT_API_URL``), whose UI is on.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

__all__ = ["Watch", "check_performance_report", "dashboard_link", "flow_run_url", "ui_base", "after_run_link"]

UI_ENV = "PREFECT_UI_URL"


def ui_base(api_url: Optional[str]) -> Optional[str]:
    """Where the Prefect UI of ``api_url`` lives: ``PREFECT_UI_URL`` when set, else the
    API URL without its ``/api`` suffix."""
    given = os.environ.get(UI_ENV)
    if given:
        return given.rstrip("/")
    if not api_url:
        return None
    base = api_url.rstrip("/")
    return base[: -len("/api")] if base.endswith("/api") else base


def flow_run_url(api_url: Optional[str], flow_run_id: Optional[str]) -> Optional[str]:
    """The UI page of a flow run: ``{ui_base}/runs/flow-run/{id}``."""
    base = ui_base(api_url)
    if not base or not flow_run_id:
        return None
    from distetl.storage import _hide_userinfo

    return _hide_userinfo(f"{base}/runs/flow-run/{flow_run_id}")


def after_run_link(api_url: Optional[str], flow_run_id: Optional[str]) -> Optional[str]:
    """The line that shows where a finished run's flow run can be looked at.

    distetl's own embedded Prefect API serves no UI (and a per-run one stops with the
    run), so the line then says to start ``distetl ui`` (same folder, or the same
    ``DISTETL_HOME``) and gives the page on its default port.
    """
    if not flow_run_id:
        return None
    if _embedded(api_url) and not os.environ.get(UI_ENV):
        return (f"in the UI: run `distetl ui` here (same DISTETL_HOME), then open "
                f"http://127.0.0.1:4200/runs/flow-run/{flow_run_id}")
    url = flow_run_url(api_url, flow_run_id)
    return f"flow run: {url}" if url else None


def dashboard_link(client: Any) -> Optional[str]:
    """The Dask dashboard of a client's scheduler, or None if it serves none."""
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard
        return None
    return str(link) if link else None


class Watch:
    """The callbacks of one run that print (and record in ``report``) the flow run's page
    and the Dask dashboard as soon as each exists.

    Args:
        console: Where the lines go (the run's console: quiet for a library call without
            progress).
        report: The run's report; gets ``flow_run_url`` and ``dashboard_url``.
    """

    def __init__(self, console: Any, report: Any):
        self.console = console
        self.report = report

    def flow_run(self, then: Optional[Callable[[str], None]] = None) -> Callable[[str], None]:
        """An ``on_flow_run`` callback: prints the flow run's page, then calls ``then``."""

        def on_flow_run(flow_run_id: str) -> None:
            if then is not None:
                then(flow_run_id)
            self.report.flow_run_url = url = flow_run_url(self.report.prefect_api, flow_run_id)
            if url:
                note = ""
                if _embedded(self.report.prefect_api) and not os.environ.get(UI_ENV):
                    note = (f" ({_whose(self.report.prefect_api)} serves no UI; "
                            "`distetl ui` shows its records, or run against `distetl cluster up`'s server)")
                self.console.print(f"flow run:  {url}{note}", highlight=False, soft_wrap=True)

        return on_flow_run

    def dashboard(self, link: str) -> None:
        """An ``on_dashboard`` callback: prints the Dask dashboard's link."""
        self.report.dashboard_url = link
        self.console.print(f"dashboard: {link}", highlight=False, soft_wrap=True)


def _whose(api_url: Optional[str]) -> str:
    """Which embedded API ``api_url`` is, and when it stops."""
    from distetl.engine.prefect_api import KEPT_URLS

    if api_url in KEPT_URLS:
        return (f"distetl's Prefect API for this DISTETL_HOME, kept for later runs until "
                f"{_duration(KEPT_URLS[api_url])} without one,")
    return "this run's own Prefect API stops with the run and"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _embedded(api_url: Optional[str]) -> bool:
    from distetl.engine.prefect_api import EMBEDDED_URLS

    return bool(api_url) and api_url in EMBEDDED_URLS


def check_performance_report(path: str, runner: str) -> str:
    """The absolute path for ``--performance-report``: Dask runners only, into a folder
    that exists.

    Raises:
        ConfigError: For the sequential runner (no Dask) or a missing folder (exit 2).
    """
    from pathlib import Path

    from distetl.errors import ConfigError

    if runner == "sequential":
        raise ConfigError(
            "--performance-report with a Dask runner (local or remote)", "--runner sequential",
            "drop --performance-report (the sequential runner does not use Dask) or use --runner local",
        )
    target = Path(path).expanduser().resolve()
    if not target.parent.is_dir():
        raise ConfigError(f"a folder that exists for --performance-report", str(target.parent),
                          f"create {target.parent} or pass a path in an existing folder")
    return str(target)
