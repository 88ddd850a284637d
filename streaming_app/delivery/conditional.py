"""Conditional and range requests (RFC 9110 §13 and §14), the same for local files and S3 objects.

Werkzeug's `make_conditional` is close but not enough for an origin a CDN sits in front of:
it evaluates `Range` before `If-None-Match` (so a revalidating range request gets 206 instead
of 304), refuses a suffix range longer than the file (the RFC says: the whole file), answers a multi-range request with 416, and its 416 loses `Content-Range` when it
passes through the app's JSON error handler. So the decision follows RFC 9110 §13.2.2 here,
using werkzeug's date and entity-tag parsers, and the body is produced lazily by the caller: a 304, a 416 or
a HEAD never reads a byte of the object.

Choices where the RFC leaves room:
- a multi-range request (`bytes=0-1,5-9`) is answered with the whole file (200): RFC 9110
  §14.2 lets a server ignore `Range`, every client accepts a 200, and HLS files are small;
- a `Range` on HEAD is ignored (§14.2: range handling is only defined for GET);
- a `Range` in another unit is ignored (§14.2: MUST); a malformed `bytes=` range is a 416;
- `If-Range` with a date matches only the exact `Last-Modified`, with an entity tag only by
  strong comparison (§13.1.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property

from werkzeug.http import http_date, parse_date, quote_etag, unquote_etag

# methods this module answers; anything else never reaches it
_GET_HEAD = ("GET", "HEAD")
# one byte-range-spec or suffix-range (RFC 9110 §14.1.1); werkzeug's parser refuses a suffix
# longer than the file, which the RFC says is the whole file
_RANGE_SPEC = re.compile(r"(\d{0,19})-(\d{0,19})")


@dataclass(frozen=True)
class Representation:
    size: int
    etag: str  # opaque tag without quotes; always a strong validator
    last_modified: int  # whole seconds since the epoch (HTTP dates have no fraction)

    # formatted once per representation: a cached master playlist answers thousands of times
    @cached_property
    def etag_header(self) -> str:
        return quote_etag(self.etag)

    @cached_property
    def last_modified_header(self) -> str:
        return http_date(self.last_modified)


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 206, 304, 412 or 416
    start: int = 0
    length: int = 0  # bytes of content to send (0 for 304/412/416 and empty files)


def _tags(value: str) -> list[tuple[str, bool]] | None:
    """Entity tags of an If-Match / If-None-Match list as (opaque, weak); None for '*'."""
    value = value.strip()
    if value == "*":
        return None
    tags = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        tag, weak = unquote_etag(part)
        tags.append((tag, weak))
    return tags


def _date(value: str | None) -> int | None:
    if not value:
        return None
    d = parse_date(value)
    if d is None:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp())


def decide(method: str, headers, rep: Representation) -> Decision:
    """What to answer for a GET/HEAD of `rep` given the request headers (a case-insensitive
    mapping). Order of evaluation: RFC 9110 §13.2.2."""
    # 1-2: If-Match, else If-Unmodified-Since -> 412 when the precondition fails
    if_match = headers.get("If-Match")
    if if_match is not None:
        tags = _tags(if_match)
        if tags is not None and not any(t == rep.etag and not weak for t, weak in tags):
            return Decision(412)
    else:
        ius = _date(headers.get("If-Unmodified-Since"))
        if ius is not None and rep.last_modified > ius:
            return Decision(412)
    # 3-4: If-None-Match (weak comparison), else If-Modified-Since -> 304
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = _tags(if_none_match)
        if tags is None or any(t == rep.etag for t, _ in tags):
            return Decision(304)
    elif method in _GET_HEAD:
        ims = _date(headers.get("If-Modified-Since"))
        if ims is not None and rep.last_modified <= ims:
            return Decision(304)
    full = Decision(200, 0, rep.size)
    # 5: Range, GET only
    value = headers.get("Range")
    if method != "GET" or not value:
        return full
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_matches(if_range.strip(), rep):
        return full
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return full
    if "," in spec:
        return full  # multi-range: the whole file (see the module docstring)
    if rep.size == 0:
        return full  # nothing to cut
    m = _RANGE_SPEC.fullmatch(spec.strip())
    if m is None or not (m[1] or m[2]):
        return Decision(416)
    if not m[1]:  # suffix: the last N bytes, all of them when the file is shorter (§14.1.3)
        suffix = int(m[2])
        if suffix == 0:
            return Decision(416)
        start = max(0, rep.size - suffix)
        return Decision(206, start, rep.size - start)
    start = int(m[1])
    stop = int(m[2]) + 1 if m[2] else rep.size
    if stop <= start or start >= rep.size:
        return Decision(416)
    stop = min(stop, rep.size)  # a range crossing the end stops at the end
    return Decision(206, start, stop - start)


def _if_range_matches(value: str, rep: Representation) -> bool:
    if value.startswith(('"', "W/")):
        tag, weak = unquote_etag(value)
        return not weak and tag == rep.etag
    return _date(value) == rep.last_modified


def epoch_seconds(value) -> int:
    """Whole epoch seconds of a datetime (naive = UTC) or a float timestamp; 0 when unknown."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp())
    return int(value)
