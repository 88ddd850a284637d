"""The `vodflow` command line."""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config import links
from config.settings import SettingsError, available_cores, get_settings

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


def gunicorn_command(settings) -> list[str]:
    """gunicorn as `vodflow web` runs it.

    Worker class streaming_app.worker.DeliveryWorker: gunicorn's gthread (each worker process
    keeps its keep-alive connections in a poller and lends a thread to a request that may wait:
    uploads, the API, S3), except that delivery requests waiting on nothing - a master playlist
    in memory, a segment on local disk - are answered on the poller thread itself, files with
    non-blocking sendfile(), so they cost no thread hand-off and a slow player holds no thread
    (docs/delivery.md). gevent was considered: its sockets make gunicorn copy files through
    Python instead of sendfile(), and its monkey-patching fights s3fs's asyncio thread. One
    process per core (+1) uses every core despite the GIL.

    Keep-alive (VODFLOW_WEB_KEEPALIVE, 75 s) outlasts the idle timeout of the load balancers and
    CDNs put in front (60 s at AWS ALB and most others), so they never send a request on a
    connection we just closed.
    The access log is off unless VODFLOW_WEB_ACCESS_LOG is set: gunicorn formats it in Python
    and it measured as costly as the whole playlist response; CDNs log at the edge.
    """
    workers = settings.web_workers or max(2, available_cores() + 1)
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{settings.web_host}:{settings.web_port}",
        "--workers", str(workers),
        "--worker-class", "streaming_app.worker.DeliveryWorker",
        "--threads", str(settings.web_threads), "--worker-connections", "2000",
        "--timeout", "600", "--graceful-timeout", "10", "--keep-alive", str(settings.web_keepalive),
        # gunicorn's C parser on every path, so the worker's event loop parses as its threads do
        "--http-parser", "fast",
        # forwarded headers are ProxyFix's job (VODFLOW_TRUSTED_PROXIES), not gunicorn's: by
        # default gunicorn believes X-Forwarded-Proto from any local process
        "--forwarded-allow-ips", "",
        *(["--access-logfile", "-"] if settings.web_access_log else []),
        "streaming_app.wsgi:app",
    ]


@app.command()
def web() -> None:
    """Run the web app under gunicorn on VODFLOW_WEB_PORT."""
    settings = _settings()
    from catalog.db import get_engine

    get_engine()  # migrate once before workers fork
    os.execv(sys.executable, gunicorn_command(settings))


@app.command()
def up() -> None:
    """Start the whole stack on this machine and print its URLs."""
    from deployments.up import run_stack

    raise typer.Exit(run_stack(_settings()))


def _wait_with_progress(video_ids: list[str], labels: dict[str, str]) -> int:
    from catalog.db import session_scope
    from catalog.state import get_video

    _settings()
    failed = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
        bars = {vid: progress.add_task(labels[vid], total=100, status="UPLOADED") for vid in video_ids}
        pending = set(video_ids)
        while pending:
            for vid in list(pending):
                with session_scope() as s:
                    v = get_video(s, vid)
                    status, pct, error = v.status.value, v.progress or 0, v.error
                progress.update(bars[vid], completed=pct, status=status)
                if status in ("READY", "PARTIAL", "FAILED", "DELETED"):
                    pending.discard(vid)
                    if status in ("FAILED", "DELETED"):
                        failed += 1
                        progress.console.print(f"[red]{labels[vid]}: {status}: {error}[/red]")
            time.sleep(0.5)
    for vid in video_ids:
        console.print(f"{vid}  {links.watch_url(vid)}")
    return failed


@app.command()
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
    once, files still being written left for later. Prints video ids and watch URLs."""
    from deployments.intake import ingest_sources

    _settings()
    accepted = ingest_sources(sources, title=title, console=console, settle_seconds=settle)
    if not accepted:
        raise typer.Exit(1)
    labels = {vid: name for name, vid in accepted}
    if not wait:
        for name, vid in accepted:
            console.print(f"{vid}  {name}  {links.watch_url(vid)}")
        return
    raise typer.Exit(1 if _wait_with_progress([vid for _, vid in accepted], labels) else 0)


@app.command()
def videos(status: str | None = typer.Option(None, help="only this status")) -> None:
    """List the catalog."""
    from sqlalchemy import select

    from catalog.db import session_scope
    from catalog.models import Video, VideoStatus

    _settings()
    table = Table("id", "title", "status", "progress", "duration", "size", "renditions", "error")
    with session_scope() as s:
        stmt = select(Video).order_by(Video.created_at.desc())
        if status:
            stmt = stmt.where(Video.status == VideoStatus(status.upper()))
        for v in s.scalars(stmt):
            rends = ",".join(r.name for r in v.renditions if r.run == v.current_run and r.status == "READY")
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
    import json

    from flows.uploads.cleanup import cleanup_uploads

    _settings()
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
    from deployments.serve import serve_environment

    serve_environment()  # before Prefect reads its settings
    settings = _settings()
    from deployments.serve import serve_flows

    try:
        serve_flows(settings)
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]DOWN[/red]"


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Health of the database, storage, Prefect API and Dask scheduler, and the ingest queue.
    Exit code 1 when any part is unreachable."""
    import json

    from sqlalchemy import func, select

    from catalog.db import session_scope
    from catalog.models import Video
    from flows.health import check_all, ingest_queue

    _settings()
    checks = check_all(detail=True)
    queue = ingest_queue() if checks["prefect"]["ok"] else {"ok": False, "error": "Prefect API unreachable"}
    counts: dict[str, int] = {}
    if checks["database"]["ok"]:
        with session_scope() as s:
            for st, n in s.execute(select(Video.status, func.count()).group_by(Video.status)):
                counts[st.value if hasattr(st, "value") else str(st)] = n
    ok = all(c["ok"] for c in checks.values())
    if as_json:
        console.print_json(json.dumps({"ok": ok, "checks": checks, "ingest": queue, "videos": counts}))
        raise typer.Exit(0 if ok else 1)
    table = Table("part", "state", "detail")
    db, st, pf, dk = checks["database"], checks["storage"], checks["prefect"], checks["dask"]
    table.add_row("database", _mark(db["ok"]), db.get("dialect") or db.get("error", ""))
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
    from flows.maintenance import run_maintenance

    _settings()
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
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="transcode | upload | delivery | player")) -> None:
    """Run a benchmark from bench/ (extra options are passed to it)."""
    names = sorted(p.stem for p in Path(__file__).resolve().parent.parent.joinpath("bench").glob("*.py")
                   if p.stem not in ("__init__", "published"))
    if name not in names:
        err.print(f"[red]no benchmark '{name}'; choose {', '.join(names)}[/red]")
        raise typer.Exit(2)
    sys.argv = [f"vodflow bench {name}", *ctx.args]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
