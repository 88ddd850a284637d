"""Errors that keep coming back in the logs of the stack's own servers, for `vodflow status`.

A Prefect server whose scheduler fails on every loop still answers /health: the failure shows
only in its log, once a minute (seen: `sqlalchemy.exc.InvalidRequestError` from
`schedule_deployments` with a mismatched SQLAlchemy). `vodflow up` keeps each part's output in
DATA_DIR/logs/NAME.log; this reads the end of those logs and reports an error line that appears
several times, so the operator sees the cause next to the health table.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

PARTS = ("prefect", "scheduler", "workers", "serve")
TAIL_BYTES = 512 * 1024
# an exception's last line (module.Error: message) or a logged ERROR line
ERROR_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception)\b.*|.*\b(?:ERROR|CRITICAL)\b.*)$")
NOISE = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[.,\d]*|\b\d\d:\d\d:\d\d[.,\d]*|0x[0-9a-f]+|\b[0-9a-f-]{32,36}\b")


def _tail(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            return fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def repeated_errors(logs_dir: Path, min_count: int = 3) -> list[dict]:
    """[{part, count, line}] for error lines seen at least `min_count` times, most frequent first."""
    out = []
    for part in PARTS:
        counts: Counter = Counter()
        sample: dict[str, str] = {}
        for raw in _tail(logs_dir / f"{part}.log"):
            line = raw.split("|", 1)[1].strip() if raw.startswith(f"{part}") and "|" in raw[:12] else raw.strip()
            if not ERROR_LINE.match(line):
                continue
            key = NOISE.sub("…", line)[:300]
            counts[key] += 1
            sample[key] = line[:300]
        for key, n in counts.most_common(3):
            if n >= min_count:
                out.append({"part": part, "count": n, "line": sample[key]})
    return sorted(out, key=lambda e: -e["count"])
