"""vodflow settings: environment variables `VODFLOW_*` and an optional `vodflow.toml`.

Precedence (highest first): keyword arguments, environment, `vodflow.toml` (the file named by
`VODFLOW_CONFIG`, else `./vodflow.toml`), defaults. Values are validated when first read, so a
bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class SettingsError(RuntimeError):
    """A setting has a value vodflow cannot use; the message names it."""


def _toml_path() -> Path:
    return Path(os.environ.get("VODFLOW_CONFIG", "vodflow.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VODFLOW_", extra="ignore", validate_default=True)

    data_dir: Path = Field(Path("./var"), description="where local state lives")
    storage_url: str = Field("", description="fsspec URL of the media store; default file://DATA_DIR/storage")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in the data dir")
    dask_address: str | None = Field(None, description="tcp://host:8786 of a Dask scheduler; unset: LocalCluster")
    dask_workers: int = Field(0, ge=0, description="LocalCluster worker count; 0 = one per core")
    web_host: str = "0.0.0.0"
    web_port: int = Field(8000, ge=1, le=65535)
    web_workers: int = Field(0, ge=0, description="gunicorn workers; 0 = sized to the machine")
    web_threads: int = Field(32, ge=1, le=1024, description="threads per gunicorn worker (requests answered at once)")
    web_keepalive: int = Field(75, ge=1, le=3600, description="seconds an idle keep-alive connection, or a "
                                                            "client that stopped reading an answer, is kept")
    web_access_log: bool = Field(False, description="gunicorn access log on stdout (roughly doubles the "
                                                    "CPU of a playlist request; CDNs log at the edge)")
    front: Literal["nginx", "none"] = Field(
        "nginx", description="what `vodflow up` puts in front of the web app: nginx (sends published "
                             "files, caches the app's answers briefly) or none (the app alone)")
    web_socket: Path | None = Field(None, description="unix socket gunicorn listens on behind vodflow's "
                                                      "nginx (set by `vodflow up`): local files are then "
                                                      "answered with X-Accel-Redirect")
    public_url: str = Field("", description="base URL users reach the web app at (links in answers, "
                                            "reports and the CLI); unset: the URL of each request")
    trusted_proxies: int = Field(0, ge=0, le=10, description="proxies (load balancer, CDN) in front of the "
                                                             "web app whose X-Forwarded-* headers are "
                                                             "believed; 0 = none")
    node_name: str = Field("", description="this machine's name in the catalog (whose disk holds an "
                                           "upload's bytes); default: the host name")
    max_upload_bytes: int = Field(20 * 1024**3, gt=0)
    cors_origins: str = "*"
    admin_token: str | None = Field(None, description="bearer token that deleting a video needs; unset: "
                                                     "deleting is refused")
    frame_ancestors: str = Field("'self'", description="CSP frame-ancestors: who may embed the pages "
                                                       "(space-separated origins, 'self', or 'none')")
    disk_reserve_bytes: int = Field(1024**3, ge=0, description="uploads are refused (507) when they would "
                                                                   "leave less free space than this in the "
                                                                   "data dir or scratch")
    segment_seconds: float = Field(6.0, gt=0, le=30)
    fast_lane: bool = Field(True, description="encode the lowest rung in one continuous pass that publishes "
                                              "chunk by chunk ahead of the rest of the ladder")
    keyframe_seconds: float = Field(2.0, gt=0, le=10)
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto)")
    ffmpeg_timeout: float = Field(6 * 3600, gt=0, description="seconds one ffmpeg run may take")
    probe_timeout: float = Field(60, gt=0)
    upload_expiry_hours: float = Field(24, gt=0)
    max_concurrent_ingests: int = Field(2, ge=1)
    dispatch: Literal["deployment", "local", "off"] = Field(
        "deployment", description="how a stored video starts processing: the Prefect deployment (else a "
                                  "local process), always a local process, or not at all")
    bulk_ingest_url: str = Field("", description="watch location for scheduled bulk ingest")
    bulk_ingest_cron: str = "*/10 * * * *"
    bulk_ingest_interval_seconds: float = Field(
        0, ge=0, description="scan every this many seconds instead of the cron; 0 = use the cron")
    maintenance_interval_seconds: float = Field(
        0, ge=0, description="run maintenance every this many seconds; 0 = hourly (at minute 7)")
    schedule_grace_seconds: float = Field(
        300, gt=0, description="a scheduled run not started this long after its time was missed")
    redirect_segments: bool = False
    # operations: the stack, recovery and bulk ingest
    prefect_port: int = Field(4200, ge=1, le=65535, description="port of the Prefect server `vodflow up` starts")
    dask_scheduler_port: int = Field(8786, ge=1, le=65535, description="port of the scheduler `vodflow up` starts")
    dask_dashboard_port: int = Field(8787, ge=0, le=65535, description="Dask dashboard port; 0 = any free port")
    bulk_ingest_settle_seconds: float = Field(5.0, ge=0, description="a watched file must keep its size this long")
    bulk_ingest_claim_grace_seconds: float = Field(
        3600.0, gt=0, description="a scan that claimed a file and went silent this long died; "
                                  "another scan may take the file")
    stale_run_seconds: float = Field(300.0, gt=0, description="a Running flow run silent this long has died")
    max_ingest_attempts: int = Field(3, ge=1, description="processing attempts before a video is FAILED")
    orphan_file_hours: float = Field(12.0, gt=0, description="age after which unreferenced scratch files go")
    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")

    _public_url_explicit: bool = PrivateAttr(False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("dispatch", mode="before")
    @classmethod
    def _dispatch_words(cls, v):
        v = str(v).strip().lower()
        return "off" if v in ("none", "0", "false", "no") else v

    @field_validator("frame_ancestors")
    @classmethod
    def _one_directive(cls, v: str) -> str:
        v = " ".join(str(v).split())
        if not v or any(c in v for c in ";,"):
            raise ValueError("give space-separated sources for CSP frame-ancestors, e.g. "
                             "\"'self' https://blog.example\" or \"'none'\"")
        return v

    @field_validator("keyframe_seconds")
    @classmethod
    def _keyframe_sane(cls, v: float) -> float:
        if v < 0.5:
            raise ValueError("keyframe interval below 0.5 s makes segments too costly")
        return v

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'storage'}"
        self.storage_url = self.storage_url.rstrip("/")
        if "://" not in self.storage_url:
            self.storage_url = f"file://{Path(self.storage_url).expanduser().resolve()}"
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'vodflow.db'}"
        ratio = self.segment_seconds / self.keyframe_seconds
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                "VODFLOW_SEGMENT_SECONDS must be a whole multiple of VODFLOW_KEYFRAME_SECONDS "
                f"(got {self.segment_seconds} and {self.keyframe_seconds})"
            )
        if self.web_socket is not None:
            self.web_socket = self.web_socket.expanduser().resolve()
            if len(os.fsencode(self.web_socket)) > 100:  # sun_path holds 108 bytes with its NUL
                raise ValueError(f"VODFLOW_WEB_SOCKET is too long for a unix socket path ({self.web_socket}); "
                                 "use a shorter VODFLOW_DATA_DIR")
        if not self.node_name:
            self.node_name = socket.gethostname()
        self._public_url_explicit = bool(self.public_url)
        if not self.public_url:
            self.public_url = f"http://localhost:{self.web_port}"
        self.public_url = self.public_url.rstrip("/")
        return self

    @property
    def public_url_explicit(self) -> bool:
        """VODFLOW_PUBLIC_URL was given (not the localhost default)."""
        return self._public_url_explicit

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def uploads_dir(self) -> Path:
        """Local, per-machine folder for partial uploads (sparse temp files)."""
        return self.data_dir / "uploads"

    @property
    def work_dir(self) -> Path:
        """Local scratch space for ffmpeg runs on this machine."""
        return self.data_dir / "scratch"


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "settings"
        name = loc if loc.startswith("PREFECT") else f"VODFLOW_{loc.upper()}"
        value = e.get("input")
        lines.append(f"{name}: {e['msg']} (got {value!r})" if loc != "settings" else e["msg"])
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and `vodflow` subcommands that change the environment)."""
    get_settings.cache_clear()


def prefect_api_url() -> str | None:
    """The Prefect API vodflow uses, looked up one way everywhere: `PREFECT_API_URL` in the
    environment (read now, not when settings were cached: `vodflow up` and tests set it late),
    else the one in vodflow.toml. None: no Prefect server (ingest runs as local processes).

    Prefect's own client and every child process read only the environment, so a URL found only
    in vodflow.toml is put there too, and an already-imported Prefect is told to re-read it."""
    url = os.environ.get("PREFECT_API_URL") or get_settings().prefect_api_url
    if url and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = url
        prefect_context = sys.modules.get("prefect.context")
        if prefect_context is not None and hasattr(prefect_context, "refresh_global_settings_context"):
            prefect_context.refresh_global_settings_context()
    return url or None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container's or taskset's share), not
    the machine's count, which over-sizes workers and ffmpeg threads where cores are pinned."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
