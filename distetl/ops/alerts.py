"""Alerts: tell someone when a run failed or was stopped.

``distetl run … --notify URL`` POSTs a JSON body (:func:`alert_payload`) to each URL;
``--on-failure COMMAND`` runs each command with the same JSON on its stdin. By default
both fire only when a run has failed (or blocked) chunks or was stopped;
``--notify-on always`` makes the URLs fire for every run that executed (a heartbeat for
a cron job), while commands stay failure-only, as their name says. A dry run or a run
that never started (exit code 2 at plan time) sends nothing.

Delivery never changes the run's exit code: each URL gets a 10 s timeout and one retry
(not after a 4xx answer), each command 60 s; what could not be delivered is reported
on stderr. No credential reaches a payload: storage options are left out, and every
credential-like value known to the run (storage option secrets, the AWS and Prefect
key variables, ``user:password@`` in URLs) is replaced by ``***`` wherever it would
appear (chunk errors included). The URLs themselves are shown only as
``scheme://host:port/…`` (a webhook's path is often its secret).

A command is split like a shell would split it (:func:`shlex.split`) and run without a
shell: ``--on-failure 'mail -s "etl failed" ops@example.com'`` works; for pipes or
redirections write ``--on-failure 'sh -c "… | …"'``. It also gets ``DISTETL_ALERT_STATUS``,
``DISTETL_PIPELINE``, ``DISTETL_RUN_ID`` and ``DISTETL_MANIFEST`` in its environment.

``distetl serve`` (or any other command that runs backfills) reuses this module:
:func:`add_alert_arguments` on its parser, then ``AlertConfig.from_args(args).fire(report,
console, exit_code)`` after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

__all__ = ["AlertConfig", "add_alert_arguments", "alert_payload", "notify_url", "send_alerts", "should_alert",
           "status_of"]

NOTIFY_ON = ("failure", "always")
URL_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
RETRY_DELAY = 1.0
MAX_FAILED = 50
MAX_ERROR = 500
#: Environment variables whose values never appear in a payload (beside storage secrets).
SECRET_ENV = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")

_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def notify_url(text: str) -> str:
    """An argparse ``type`` for ``--notify``: an ``http://`` or ``https://`` URL with a
    host (exit code 2 otherwise, before anything runs)."""
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(
            f"Expected an http:// or https:// URL with a host; got {_shown(text)!r}. "
            "Fix: pass e.g. --notify https://hooks.example.com/etl")
    return text


def add_alert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--notify``, ``--notify-on`` and ``--on-failure`` to a command's parser."""
    parser.add_argument("--notify", action="append", default=[], type=notify_url, metavar="URL",
                        help="POST a JSON summary of the run to URL when it fails or is stopped (repeatable)")
    parser.add_argument("--notify-on", choices=NOTIFY_ON, default="failure",
                        help="when --notify URLs fire: failure (failed/blocked chunks or stopped; default) "
                             "or always (every run that executed)")
    parser.add_argument("--on-failure", action="append", default=[], metavar="COMMAND",
                        help="run COMMAND (no shell; shlex-split) with the JSON summary on stdin when the run "
                             "fails or is stopped (repeatable)")


@dataclass
class AlertConfig:
    """Where a command's runs report: URLs, commands, and when URLs fire."""

    urls: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    when: str = "failure"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AlertConfig":
        return cls(list(getattr(args, "notify", None) or []), list(getattr(args, "on_failure", None) or []),
                   getattr(args, "notify_on", None) or "failure")

    def __bool__(self) -> bool:
        return bool(self.urls or self.commands)

    def fire(self, report: Any, console: Any = None, exit_code: Optional[int] = None) -> list[str]:
        """Send this run's alerts; see :func:`send_alerts`."""
        if not self:
            return []
        return send_alerts(report, self.urls, self.commands, self.when, console=console, exit_code=exit_code)


def status_of(report: Any) -> str:
    """``stopped`` (SIGINT/SIGTERM), ``failed`` (failed or blocked chunks) or ``ok``."""
    if report.interrupted:
        return "stopped"
    if report.failed_count or report.blocked_count:
        return "failed"
    return "ok"


def should_alert(report: Any, when: str = "failure") -> bool:
    """Whether a run's ``--notify`` URLs fire: always, or when it did not end ok."""
    return when == "always" or status_of(report) != "ok"


def _exit_code(report: Any) -> int:
    status = status_of(report)
    if status == "stopped":
        try:
            return 128 + int(signal.Signals[report.interrupted])
        except (KeyError, ValueError):
            return 130
    return 1 if status == "failed" else 0


def alert_payload(report: Any, exit_code: Optional[int] = None) -> dict[str, Any]:
    """The JSON body of an alert: what happened, where to look, nothing secret.

    Keys: ``text`` (one line), ``status`` (``failed``/``stopped``/``ok``), ``exit_code``,
    ``pipeline``, ``run_id``, ``output``, ``runner``, ``host``, ``started_at``,
    ``seconds``, ``plan``, ``counts`` (total, written, skipped, failed, blocked, not_run,
    rows), ``interrupted`` (``SIGINT``/``SIGTERM`` or null), ``stages`` (per-stage
    counts), ``failed_chunks`` (at most 50: stage, key, error (at most 500 characters),
    attempts, timed_out), ``failed_chunks_not_listed``, ``blocked_chunks`` (a count),
    ``manifest``, ``prefect`` (flow_run_id, flow_run_url, state, message, api_url) and
    ``dask_dashboard``.
    """
    status = status_of(report)
    failed = report.failed
    counts = {"total": report.total, "written": report.written, "skipped": report.skipped,
              "failed": report.failed_count, "blocked": report.blocked_count, "not_run": report.not_run,
              "rows": report.rows}
    flow_run_url = getattr(report, "flow_run_url", None)
    if not flow_run_url and report.flow_run_id:
        from distetl.engine.watch import flow_run_url as url_of

        flow_run_url = url_of(report.prefect_api, report.flow_run_id)
    body: dict[str, Any] = {
        "text": _headline(report, status, counts),
        "status": status,
        "exit_code": _exit_code(report) if exit_code is None else exit_code,
        "pipeline": report.pipeline,
        "run_id": report.run_id,
        "output": report.output,
        "runner": report.runner,
        "host": socket.gethostname(),
        "started_at": report.started_at,
        "seconds": round(report.seconds, 3),
        "plan": {k: (v[:200] if isinstance(v, str) else v) for k, v in (report.plan or {}).items()},
        "counts": counts,
        "interrupted": report.interrupted,
        "stages": report.stage_summary(),
        "failed_chunks": [
            {"stage": r.stage or report.pipeline, "key": r.key, "error": _truncate(r.error or ""),
             "attempts": r.attempts, "timed_out": bool(getattr(r, "timed_out", False))}
            for r in failed[:MAX_FAILED]
        ],
        "failed_chunks_not_listed": max(0, report.failed_count - min(len(failed), MAX_FAILED)),
        "blocked_chunks": report.blocked_count,
        "manifest": report.manifest_path,
        "prefect": {"flow_run_id": report.flow_run_id, "flow_run_url": flow_run_url,
                    "state": report.flow_state, "message": report.flow_state_message,
                    "api_url": report.prefect_api},
        "dask_dashboard": getattr(report, "dashboard_url", None),
    }
    return _scrub(body, _secrets(report.storage_options))


def _headline(report: Any, status: str, counts: Mapping[str, int]) -> str:
    where = f"; manifest {report.manifest_path}" if report.manifest_path else ""
    if status == "stopped":
        what = f"stopped by {report.interrupted}: {counts['written']} written, {counts['not_run']} not run"
    elif status == "failed":
        keys = ", ".join(r.key for r in report.failed[:3]) + (", …" if report.failed_count > 3 else "")
        what = (f"{counts['failed']} of {counts['total']} chunk(s) failed"
                + (f" ({keys})" if keys else "") + (f", {counts['blocked']} blocked" if counts["blocked"] else ""))
    else:
        what = f"ok: {counts['written']} written, {counts['skipped']} skipped of {counts['total']}"
    return f"distetl {report.pipeline}: {what} (run {report.run_id[:8]}){where}"


def _truncate(text: str, limit: int = MAX_ERROR) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _secrets(storage_options: Optional[Mapping[str, Any]]) -> list[str]:
    """Every credential value the run knows, longest first."""
    from distetl.storage import _env_secrets, _secret_values

    found = _secret_values(storage_options or {}) + _env_secrets()
    found += [os.environ[n] for n in SECRET_ENV if len(os.environ.get(n, "")) >= 4]
    return sorted(set(found), key=len, reverse=True)


def _scrub(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return _USERINFO.sub(r"\1***@", value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secrets) for v in value]
    return value


def _shown(url: str) -> str:
    """A URL as it may be printed: ``scheme://host:port/…`` (paths and queries of
    webhooks carry their tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not host:
        return _USERINFO.sub(r"\1***@", url)[:40]
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{host}{port}{rest}"


class AlertError(Exception):
    """One alert could not be delivered."""


def post_json(url: str, body: bytes, timeout: float = URL_TIMEOUT, retries: int = 1) -> int:
    """POST ``body`` as JSON; retry once (after :data:`RETRY_DELAY`) unless the server
    answered 4xx. Returns the HTTP status.

    Raises:
        AlertError: With what went wrong (the URL itself is not in the message).
    """
    from distetl.version import __version__

    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": f"distetl/{__version__}"})
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(RETRY_DELAY)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read(65536)
                return answer.status
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
            if 400 <= exc.code < 500:
                break
        except urllib.error.URLError as exc:
            problem = f"{type(exc.reason).__name__}: {exc.reason}"
        except (OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc or 'timed out'}"
    tries = f"{attempt + 1} attempt(s)"
    raise AlertError(f"{problem} ({tries}, {timeout:g} s timeout each)")


def run_command(command: str, body: bytes, env: Mapping[str, str], timeout: float = COMMAND_TIMEOUT) -> None:
    """Run ``command`` (shlex-split, no shell) with ``body`` on stdin.

    Raises:
        AlertError: If it cannot start, times out or exits non-zero.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise AlertError(f"cannot split the command: {exc}") from None
    if not argv:
        raise AlertError("empty command")
    try:
        done = subprocess.run(argv, input=body, capture_output=True, timeout=timeout, env={**os.environ, **env})
    except FileNotFoundError:
        raise AlertError(f"{argv[0]!r} not found (the command runs without a shell; "
                         "write `sh -c '…'` for shell syntax)") from None
    except subprocess.TimeoutExpired:
        raise AlertError(f"still running after {timeout:g} s; killed") from None
    except OSError as exc:
        raise AlertError(f"{type(exc).__name__}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise AlertError(f"exit code {done.returncode}" + (f": {' / '.join(tail)[:300]}" if tail else ""))


def send_alerts(
    report: Any,
    notify_urls: Sequence[str] = (),
    on_failure_cmds: Sequence[str] = (),
    when: str = "failure",
    console: Any = None,
    exit_code: Optional[int] = None,
) -> list[str]:
    """Deliver a finished run's alerts; never raises.

    Args:
        report: The run's report (its manifest written).
        notify_urls: URLs to POST the payload to: on failure or stop, or always
            (``when="always"``).
        on_failure_cmds: Commands to run with the payload on stdin, on failure or stop.
        when: ``failure`` or ``always`` (for the URLs).
        console: Where to say what was sent and what could not be (stderr).
        exit_code: The run's exit code, for the payload (derived from the report if None).

    Returns:
        What could not be delivered, one line each (empty when all went out).
    """
    status = status_of(report)
    urls = list(notify_urls) if should_alert(report, when) else []
    commands = list(on_failure_cmds) if status != "ok" else []
    if not urls and not commands:
        return []
    problems: list[str] = []
    try:
        payload = alert_payload(report, exit_code)
        body = json.dumps(payload, default=str, indent=1).encode()
    except Exception as exc:  # noqa: BLE001 - an alert must never break the run's ending
        problems.append(f"alert not sent: could not build its payload ({type(exc).__name__}: {exc})")
        urls, commands = [], []
    secrets = _secrets(report.storage_options)
    for url in urls:
        try:
            code = post_json(url, body)
            _say(console, f"alert sent: POST {_shown(url)} (HTTP {code})")
        except AlertError as exc:
            problems.append(f"alert to {_shown(url)} failed: {_scrub(str(exc), secrets)}")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"alert to {_shown(url)} failed: {type(exc).__name__}: {_scrub(str(exc), secrets)}")
    env = {"DISTETL_ALERT_STATUS": status, "DISTETL_PIPELINE": report.pipeline, "DISTETL_RUN_ID": report.run_id,
           "DISTETL_MANIFEST": report.manifest_path or ""}
    for command in commands:
        name = (command.split() or ["?"])[0]
        try:
            run_command(command, body, env)
            _say(console, f"alert sent: ran {name}")
        except AlertError as exc:
            problems.append(f"alert command {name} failed: {_scrub(str(exc), secrets)}")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"alert command {name} failed: {type(exc).__name__}: {_scrub(str(exc), secrets)}")
    from rich.markup import escape

    for problem in problems:
        _say(console, f"[yellow]{escape(problem)}[/] (the run's exit code is unchanged)", markup=True)
    return problems


def _say(console: Any, text: str, markup: bool = False) -> None:
    if console is None:
        return
    try:
        console.print(text, highlight=False, soft_wrap=True, markup=markup)
    except Exception:  # noqa: BLE001
        pass
