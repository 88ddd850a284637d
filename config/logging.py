"""One logging set-up for the CLI, the web app and the workers."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("VODFLOW_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if any(getattr(h, "_vodflow", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._vodflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
