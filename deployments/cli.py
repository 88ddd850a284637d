"""The `vodflow` command line.

Commands import the catalog, Prefect, Dask and the stack inside their functions: `vodflow --help`
and every command pay only for what they use (SQLAlchemy and the catalog take about a second,
Prefect and the flows several), and a Prefect import must come after the environment the command
prepares for it (the joined stack's PREFECT_API_URL, serve-flows' settings), because Prefect
reads its settings once, when it is imported.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import links
from config.settings import SettingsError, get_settings, prefect_api_url, reset_settings
from deployments.logscan import repeated_errors
from deployments.serve import serve_environment, serve_flows
from deployments.web import gunicorn_command

app = typer.Typer(help="vodflow: resumable uploads in, adaptive HLS out.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def _settings():
    try:
        return get_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def web() -> None:
    """Run the web app under gunicorn on VODFLOW_WEB_PORT (or the unix socket VODFLOW_WEB_SOCKET,
    behind the nginx `vodflow up` starts)."""
    settings = _settings()
    from catalog.db import get_engine  # deferred: the catalog (SQLAlchemy, alembic), see above

    get_engine()  # migrate once before workers fork
    if settings.web_socket is not None:
        settings.web_socket.parent.mkdir(parents=True, exist_ok=True)
    os.execv(sys.executable, gunicorn_command(settings))


@app.command()
def up() -> None:
    """Start the whole stack on this machine and print its URLs."""
    from deployments.up import run_stack  # deferred: the catalog, Dask's client, requests

    raise typer.Exit(run_stack(_settings()))


def _joined_settings():
    """Settings of a command that uses the pipeline: a stack running with this data dir
    (DATA_DIR/stack.json) lends its Prefect API and Dask scheduler, unless settings name others."""
    from config.stack import join_running_stack  # deferred: psutil, for the commands that join

    _settings()
    join_running_stack()
    return _settings()


DEAD_RUN_STATES = ("CRASHED", "FAILED", "CANCELLED")
LIVENESS_EVERY = 5.0


def _run_died(run_id: str | None, api: str | None) -> str | None:
    """Why the run holding a video is dead, or None while it may still be working."""
    from flows.dispatch import LOCAL_PREFIX  # deferred: the catalog, see above

    if not run_id:
        return None
    if run_id.startswith(LOCAL_PREFIX):
        host, _, pid = run_id[len(LOCAL_PREFIX):].rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            import psutil  # deferred: only `ingest --wait` asks after a process

            try:
                if psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE:
                    return None
            except psutil.Error:
                pass
            return f"its ingest process ({pid}) is gone"
        return None
    if not api:
        return None
    import requests  # deferred: about 0.1 s, only `ingest --wait` asks Prefect here

    try:
        r = requests.get(f"{api.rstrip('/')}/flow_runs/{run_id}", timeout=5)
        if r.status_code == 404:
            return f"Prefect no longer knows its flow run {run_id}"
        state = r.json().get("state") or {}
    except Exception:  # noqa: BLE001 - Prefect busy or restarting: ask again later
        return None
    if state.get("type") in DEAD_RUN_STATES:
        return f"its flow run {run_id} is {state.get('name') or state['type']}: {state.get('message') or ''}".rstrip(": ")
    return None


def _wait_with_progress(video_ids: list[str], labels: dict[str, str], *, api: str | None = None,
                        runner=None, runner_log: Path | None = None) -> int:
    """Progress bars until every video ends; returns how many did not end READY or PARTIAL.
    A run that died (its process gone, its flow run crashed, the batch runner gone) is reported
    and counted, not waited on."""
    # deferred: the catalog, see above
    from catalog.db import session_scope
    from catalog.models import VideoStatus
    from catalog.state import get_video

    terminal = (VideoStatus.READY, VideoStatus.PARTIAL, VideoStatus.FAILED, VideoStatus.DELETED)
    _settings()
    failed = 0
    suspects: dict[str, float] = {}
    last_check = 0.0
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
        bars = {vid: progress.add_task(labels[vid], total=100, status="UPLOADED") for vid in video_ids}
        pending = set(video_ids)
        while pending:
            check = time.monotonic() - last_check >= LIVENESS_EVERY
            if check:
                last_check = time.monotonic()
            runner_gone = runner is not None and runner.poll() is not None
            for vid in list(pending):
                with session_scope() as s:
                    v = get_video(s, vid)
                    status, pct, error, run_id = v.status, v.progress or 0, v.error, v.flow_run_id
                progress.update(bars[vid], completed=pct, status=status.value)
                if status in terminal:
                    pending.discard(vid)
                    if status in (VideoStatus.FAILED, VideoStatus.DELETED):
                        failed += 1
                        progress.console.print(f"[red]{labels[vid]}: {status.value}: {error}[/red]")
                    continue
                why = None
                if runner_gone:
                    why = (f"the ingest runner exited with code {runner.returncode}"
                           + (f" (its log: {runner_log})" if runner_log else ""))
                elif check:
                    why = _run_died(run_id, api)
                if why is None:
                    suspects.pop(vid, None)
                    continue
                # a run that just ended may not have written its outcome yet: one more look first
                first = suspects.setdefault(vid, time.monotonic())
                if time.monotonic() - first >= 3:
                    pending.discard(vid)
                    failed += 1
                    progress.update(bars[vid], status=f"{status.value}, run died")
                    progress.console.print(f"[red]{labels[vid]}: left {status.value}: {why}; "
                                           "`vodflow maintain` will start it again[/red]")
            if runner_gone:
                last_check = 0.0  # re-check the others at once
            time.sleep(0.5)
    for vid in video_ids:
        console.print(f"{vid}  {links.watch_url(vid)}")
    return failed


def _start_batch(video_ids: list[str]) -> tuple[subprocess.Popen, str, Path]:
    """The batch runner for these videos (deployments/batch.py), once its temporary Prefect
    server and Dask cluster are up; exits with code 3 and the cause when they cannot start."""
    from deployments.batch import PREFECT_START_TIMEOUT  # deferred: Prefect, Dask, the catalog

    settings = get_settings()
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"ingest-{int(time.time())}-{os.getpid()}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.batch", *video_ids], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    err.print(f"starting a temporary Prefect server and Dask cluster for {len(video_ids)} video(s) "
              "(no stack is running; `vodflow up` keeps them) …")
    deadline = time.monotonic() + PREFECT_START_TIMEOUT + 60  # the server, then the cluster
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    if line.startswith(b"ready "):
        proc.stdout.close()
        return proc, line.split()[1].decode(), log_path
    if line == b"":
        # end of its output: the runner is exiting (its stdout closes a moment before it is
        # reaped); let it finish writing the cause to its log rather than kill it mid-way
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        cause = "the temporary Prefect server and Dask cluster did not start in time"
    else:
        cause = log_path.read_text(errors="replace").strip() or f"the ingest runner exited with code {proc.returncode}"
    err.print(f"cannot process the videos: {cause}", style="red", markup=False, highlight=False)
    err.print(f"The videos are stored (UPLOADED): once this is fixed, `vodflow maintain` starts them. Log: {log_path}")
    raise typer.Exit(EXIT_START_FAILED)


EXIT_START_FAILED = 3


@app.command(epilog="Exit codes: 0 every source was ingested (with --wait: ended READY or PARTIAL) or "
                    "was already known, so running a finished batch again succeeds; files still being "
                    "written are left for the next run and do not fail it. 1 something failed: a file "
                    "refused, missing or unreadable, or (with --wait) a video FAILED or its run died. "
                    "2 bad arguments or settings. 3 the pipeline could not start (the temporary Prefect "
                    "server or Dask cluster did not come up): the message says why and what to do.")
def ingest(
    sources: list[str] = typer.Argument(..., help="video files (or URLs) to ingest"),
    wait: bool = typer.Option(False, "--wait", help="wait until every video is READY, with a progress bar"),
    title: str | None = typer.Option(None, help="title (for a single source)"),
    settle: float | None = typer.Option(
        None, "--settle", help="for folders and bucket prefixes: seconds a file's size must hold still "
                               "before it is taken (default VODFLOW_BULK_INGEST_SETTLE_SECONDS)"),
) -> None:
    """Validate, store and transcode videos: files, file URLs (s3://…, https://…), or folders and
    bucket prefixes (s3://bucket/incoming/), which are scanned like bulk ingest: each content
    once, files still being written left for later. Prints video ids and watch URLs.

    With `vodflow up` running (same data dir), the stack's Prefect server and Dask workers do the
    work and the runs show in its Prefect UI. Without it, one temporary Prefect server and one
    Dask cluster serve the whole batch, VODFLOW_MAX_CONCURRENT_INGESTS videos at a time."""
    settings = _joined_settings()
    # deferred: the flows and Prefect; after joining the stack, so Prefect starts with its API URL
    from deployments.intake import ingest_sources

    api = prefect_api_url()
    if api and settings.dispatch == "deployment":
        err.print(f"using the Prefect API at {api}")
    local_batch = settings.dispatch == "local" or (settings.dispatch == "deployment" and not api)
    failures: list[str] = []
    dispatch_env = os.environ.get("VODFLOW_DISPATCH")
    if local_batch:
        # stored first, then handed to one batch runner, instead of a process per file
        os.environ["VODFLOW_DISPATCH"] = "off"
        reset_settings()
    try:
        accepted = ingest_sources(sources, title=title, console=console, settle_seconds=settle,
                                  failures=failures)
    finally:
        if local_batch:
            if dispatch_env is None:
                os.environ.pop("VODFLOW_DISPATCH", None)
            else:
                os.environ["VODFLOW_DISPATCH"] = dispatch_env
            reset_settings()
    labels = {vid: name for name, vid in accepted}
    runner, runner_log = None, None
    if local_batch and accepted:
        runner, api, runner_log = _start_batch([vid for _, vid in accepted])
    if not wait or not accepted:
        for name, vid in accepted:
            console.print(f"{vid}  {name}  {links.watch_url(vid)}")
        raise typer.Exit(1 if failures else 0)
    if settings.dispatch == "off":
        for name, vid in accepted:
            console.print(f"{vid}  {name}  {links.watch_url(vid)}")
        err.print("[yellow]VODFLOW_DISPATCH is off: the videos are stored and not processed here; "
                  "nothing to wait for[/yellow]")
        raise typer.Exit(1 if failures else 0)
    bad = _wait_with_progress([vid for _, vid in accepted], labels, api=api, runner=runner,
                              runner_log=runner_log)
    raise typer.Exit(1 if (failures or bad) else 0)


@app.command()
def videos(status: str | None = typer.Option(None, help="only this status")) -> None:
    """List the catalog."""
    # deferred: the catalog, see above
    from sqlalchemy import select as sql_select

    from catalog.db import session_scope
    from catalog.models import RenditionStatus, Video, VideoStatus

    _joined_settings()
    table = Table("id", "title", "status", "progress", "duration", "size", "renditions", "error")
    with session_scope() as s:
        stmt = sql_select(Video).order_by(Video.created_at.desc())
        if status:
            stmt = stmt.where(Video.status == VideoStatus(status.upper()))
        for v in s.scalars(stmt):
            rends = ",".join(r.name for r in v.renditions
                             if r.run == v.current_run and r.status == RenditionStatus.READY)
            table.add_row(v.id, v.title or "", v.status.value, f"{v.progress or 0:.0f}%",
                          f"{v.duration or 0:.1f}s", f"{v.width}x{v.height}" if v.width else "",
                          rends, (v.error or "")[:60])
    console.print(table)


@app.command()
def cleanup(
    dry_run: bool = typer.Option(False, "--dry-run", help="only report what would be removed"),
    grace_minutes: float = typer.Option(60.0, help="leave temp files touched within this many minutes"),
    keep_days: float = typer.Option(7.0, help="forget finished upload sessions after this many days"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Remove expired or abandoned uploads and orphaned temporary files (run it on each web host)."""
    from flows.uploads.cleanup import cleanup_uploads  # deferred: the catalog, see above

    _joined_settings()
    report = cleanup_uploads(orphan_grace=grace_minutes * 60, keep_days=keep_days, dry_run=dry_run)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    verb = "would free" if dry_run else "freed"
    console.print(
        f"uploads: {report.expired} expired, {report.handed_off} interrupted hand-offs finished, "
        f"{report.orphan_files} orphaned temp files, {report.pruned_sessions} old sessions forgotten; "
        f"{verb} {report.bytes_freed / 1e6:.1f} MB"
        + (f" ({report.busy} busy, left for next time)" if report.busy else "")
        + (f"; {report.elsewhere} belong to other web hosts (run cleanup there)" if report.elsewhere else ""))


@app.command("serve-flows")
def serve_flows_command() -> None:
    """Serve the Prefect deployments (ingest/on-demand, bulk-ingest/scheduled, maintenance/hourly)
    from this machine, against the Prefect server in PREFECT_API_URL."""
    serve_environment()  # before Prefect reads its settings
    settings = _settings()
    try:
        serve_flows(settings)
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _since(moment) -> str:
    """A moment (epoch seconds or ISO 8601) as local time, with how long ago."""
    when = (datetime.fromtimestamp(moment) if isinstance(moment, (int, float))
            else datetime.fromisoformat(str(moment).replace("Z", "+00:00")).astimezone().replace(tzinfo=None))
    ago = max(0.0, (datetime.now() - when).total_seconds())
    span = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.0f} h"
    return f"{when:%Y-%m-%d %H:%M:%S} ({span} ago)"


def _stack_summary(stack: dict | None) -> list[dict]:
    """The processes of the running `vodflow up` and what became of them: restarts, last exit."""
    rows = []
    for name, c in ((stack or {}).get("components") or {}).items():
        if not isinstance(c, dict):
            continue
        last = (c.get("exits") or [None])[-1]
        rows.append({"name": name, "title": c.get("title") or name, "pid": c.get("pid"), "state": c.get("state"),
                     "since": _since(c["since"]) if c.get("since") else None,
                     "restarts": int(c.get("restarts") or 0),
                     "last_exit": f"{last['how']} at {_since(last['at'])}" if last else None})
    return rows


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]DOWN[/red]"


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Health of the database, storage, Prefect API and Dask scheduler, the schedules, and the
    ingest queue. Exit code 1 when any part is unreachable or a scheduled deployment has no
    upcoming run or missed one."""
    # deferred: the catalog and requests, see above
    from sqlalchemy import func
    from sqlalchemy import select as sql_select

    from catalog.db import session_scope
    from catalog.models import Video
    from config.stack import running_stack
    from flows.health import check_all, ingest_queue

    _joined_settings()
    checks = check_all(detail=True)
    queue = ingest_queue() if checks["prefect"]["ok"] else {"ok": False, "error": "Prefect API unreachable"}
    counts: dict[str, int] = {}
    if checks["database"]["ok"]:
        with session_scope() as s:
            for st, n in s.execute(sql_select(Video.status, func.count()).group_by(Video.status)):
                counts[st.value if hasattr(st, "value") else str(st)] = n
    ok = all(c["ok"] for c in checks.values())
    # errors the stack's own servers keep logging, even while they answer their health checks
    settings = get_settings()
    stack = running_stack(settings.data_dir)
    repeated = repeated_errors(Path(stack["logs"]) if stack and stack.get("logs") else settings.data_dir / "logs")
    parts = (stack or {}).get("components") or {}
    # a part of the stack waiting to be restarted is down, whatever the other checks say
    ok = ok and not any(isinstance(c, dict) and c.get("state") == "restarting" for c in parts.values())
    if as_json:
        console.print_json(json.dumps({"ok": ok, "checks": checks, "ingest": queue, "videos": counts,
                                       "repeated_errors": repeated, "stack": _stack_summary(stack)}))
        raise typer.Exit(0 if ok else 1)
    table = Table("part", "state", "detail")
    db, st, pf, dk = checks["database"], checks["storage"], checks["prefect"], checks["dask"]
    db_detail = db.get("dialect") or db.get("error", "")
    if db.get("server_started_at"):
        db_detail += f", server up since {_since(db['server_started_at'])}"
    table.add_row("database", _mark(db["ok"]), db_detail)
    table.add_row("storage", _mark(st["ok"]), st.get("url", "") + (f"  {st['error']}" if st.get("error") else ""))
    table.add_row("Prefect API", _mark(pf["ok"]), pf.get("url") or pf.get("note", "") if pf["ok"]
                  else f"{pf.get('url', '')}  {pf.get('error', '')}")
    if dk.get("configured"):
        detail = dk["address"]
        if "workers" in dk:
            detail += f"  {dk['workers']} workers, {dk['threads']} threads, {dk['memory_bytes'] / 2**30:.1f} GiB"
        if dk.get("error"):
            detail += f"  {dk['error']}"
    else:
        detail = dk.get("note", "")
    table.add_row("Dask", _mark(dk["ok"]), detail)
    for row in _stack_summary(stack):
        if row["state"] == "restarting":
            table.add_row(row["title"], "[red]DOWN[/red]", f"{row['last_exit']}; `vodflow up` is restarting it")
        elif row["restarts"]:
            table.add_row(row["title"], "[yellow]RESTARTED[/yellow]",
                          f"{row['title']} restarted {row['restarts']}× by `vodflow up`, last: {row['last_exit']}; "
                          + ("starting again" if row["state"] == "recovering" else f"running again since {row['since']}")
                          + f" (pid {row['pid']})")
    for e in repeated:
        table.add_row(f"{e['part']} log", "[yellow]ERRORS[/yellow]", f"{e['count']}× {e['line']}")
    sc = checks["schedules"]
    if sc.get("configured"):
        if sc["ok"]:
            nexts = [f"{name} next {d['next_run'][11:19]}" for name, d in sc.get("deployments", {}).items()
                     if d.get("next_run")]
            table.add_row("schedules", _mark(True), ", ".join(nexts))
        else:
            table.add_row("schedules", "[red]MISSED[/red]", sc.get("error", ""))
    if queue.get("configured"):
        if queue["ok"]:
            table.add_row("ingest runs", "", f"{queue['running']} running, {queue['queued']} queued"
                          + (f" (at most {queue['limit']} at once)" if queue.get("limit") else ""))
        else:
            table.add_row("ingest runs", "[red]?[/red]", queue.get("error", ""))
    table.add_row("videos", "", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")
    console.print(table)
    raise typer.Exit(0 if ok else 1)


@app.command()
def maintain(dry_run: bool = typer.Option(False, "--dry-run", help="report only; change nothing")) -> None:
    """Run maintenance now: re-dispatch videos whose run died, remove expired uploads and orphans."""
    _joined_settings()
    # deferred: the flows and Prefect; after joining the stack, so Prefect starts with its API URL
    from flows.maintenance import run_maintenance

    report = run_maintenance(dry_run=dry_run).to_dict()
    for v in report["videos"]:
        console.print(f"{v['video_id']}  {v['status']}  {v['run_state']}  {v['reason']}  → {v['action']}")
    console.print(f"{len(report['redispatched'])} re-dispatched, {len(report['failed'])} failed, "
                  f"{report['expired_uploads']} uploads expired, {len(report['removed'])} orphans removed "
                  f"({report['removed_bytes'] / 1e6:.1f} MB)" + (" [dry run]" if dry_run else ""))
    for e in report["errors"]:
        err.print(f"[red]{e}[/red]")
    raise typer.Exit(1 if report["errors"] else 0)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context,
          name: str = typer.Argument(..., help="transcode | upload | delivery | player | firstplay")) -> None:
    """Run a benchmark from bench/ (extra options are passed to it)."""
    names = sorted(p.stem for p in Path(__file__).resolve().parent.parent.joinpath("bench").glob("*.py")
                   if p.stem not in ("__init__", "published", "shared"))
    if name not in names:
        err.print(f"[red]no benchmark '{name}'; choose {', '.join(names)}[/red]")
        raise typer.Exit(2)
    sys.argv = [f"vodflow bench {name}", *ctx.args]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
