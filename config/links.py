"""Links to a video (and an upload) that people and scripts follow, built in one place.

The base is `VODFLOW_PUBLIC_URL` when it is set: what users reach the site at, whatever proxy,
CDN or port mapping is in between. Unset, a link made while answering a request uses the URL
the request came in on (scheme, host and prefix, corrected by ProxyFix when
`VODFLOW_TRUSTED_PROXIES` says proxies are in front); a link made outside a request (the CLI, a
flow's report) uses the default `http://localhost:{VODFLOW_WEB_PORT}`.

Nothing of the web app is imported here (flows and the CLI use this module too): the web app
tells it the request's URL through `request_base` while it answers. The paths are the web app's
routes (uploads `/files/`, api `/api/videos/`, pages `/watch/`, delivery `/v/`).
"""

from __future__ import annotations

from contextvars import ContextVar

from config.settings import get_settings

# the URL root of the request being answered (set by the web app around each request)
request_base: ContextVar[str | None] = ContextVar("vodflow_request_base", default=None)


def base_url() -> str:
    """Scheme, host and path prefix of the web app, without a trailing slash."""
    settings = get_settings()
    if settings.public_url_explicit:
        return settings.public_url
    return request_base.get() or settings.public_url


def upload_url(upload_id: str) -> str:
    return f"{base_url()}/files/{upload_id}"


def status_url(video_id: str) -> str:
    return f"{base_url()}/api/videos/{video_id}"


def watch_url(video_id: str) -> str:
    return f"{base_url()}/watch/{video_id}"


def master_url(video_id: str) -> str:
    return f"{base_url()}/v/{video_id}/master.m3u8"


def video_links(video_id: str) -> dict:
    """{'id', 'status_url', 'watch_url'}: what an upload answers once it is a video."""
    return {"id": video_id, "status_url": status_url(video_id), "watch_url": watch_url(video_id)}
