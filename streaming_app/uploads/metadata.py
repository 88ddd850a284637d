"""tus `Upload-Metadata`: comma-separated `key base64(value)` pairs, checked strictly.

Clients name things differently: tus-js-client and Uppy send `filename`/`filetype` (older
code `name`/`type`), tuspy whatever the caller passes. Values are untrusted: a file name is
decoded as UTF-8, stripped of any folder part and of control characters before use.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

MAX_HEADER_CHARS = 8 * 1024
_KEY = re.compile(r"^[!-~]+$")  # visible ASCII, no space; commas are excluded below
FILENAME_KEYS = ("filename", "name")
TYPE_KEYS = ("filetype", "type", "mimetype", "contentType")


class MetadataError(ValueError):
    """Upload-Metadata is malformed; the message says how."""


def parse(header: str | None) -> dict[str, str | None]:
    """Decode the header into {key: text or None}. Binary values are kept as base64 text."""
    out: dict[str, str | None] = {}
    if header is None or not header.strip():
        return out
    if len(header) > MAX_HEADER_CHARS:
        raise MetadataError(f"Upload-Metadata is longer than {MAX_HEADER_CHARS} characters")
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            raise MetadataError("Upload-Metadata has an empty entry (two commas in a row?)")
        key, _, value = pair.partition(" ")
        value = value.strip()
        if not _KEY.match(key) or "," in key:
            raise MetadataError(f"Upload-Metadata key {key!r} must be visible ASCII without spaces or commas")
        if key in out:
            raise MetadataError(f"Upload-Metadata key '{key}' appears twice; keys must be unique")
        if not value:
            out[key] = None
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MetadataError(f"the value of Upload-Metadata key '{key}' is not valid base64") from None
        try:
            out[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            if key in FILENAME_KEYS or key in TYPE_KEYS or key == "title":
                raise MetadataError(f"Upload-Metadata '{key}' must be UTF-8 text") from None
            out[key] = value
    return out


def clean_text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = unicodedata.normalize("NFC", value)
    value = "".join(ch for ch in value if unicodedata.category(ch) not in ("Cc", "Cf", "Cs") or ch == " ")
    value = value.strip()
    return value[:limit] or None


def filename_of(meta: dict[str, str | None]) -> str | None:
    """The file's own name (no folders), cleaned; None if the client sent none."""
    for key in FILENAME_KEYS:
        if meta.get(key):
            name = re.split(r"[\\/]", meta[key])[-1]
            name = clean_text(name, 255)
            if name and name not in (".", ".."):
                return name
    return None


def mime_of(meta: dict[str, str | None]) -> str | None:
    for key in TYPE_KEYS:
        if meta.get(key):
            return clean_text(meta[key], 128)
    return None


def title_of(meta: dict[str, str | None]) -> str | None:
    return clean_text(meta.get("title"), 300)
