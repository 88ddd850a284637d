"""Captions and chapters as text: read SRT/WebVTT the way people's files really are, clean them,
cut them into HLS WebVTT segments; list and extract the text subtitle streams and the chapters
of a source with ffprobe/ffmpeg.

Why a parser of our own: the libraries (webvtt-py, pysrt, srt) either stop at the first bad cue
or silently skip it; an upload answer must say which cue was dropped and why (line number,
negative or inverted times, markup removed), and keep the rest. The grammar is small (blocks
separated by blank lines, one timing line each), so the whole reader is a screenful.

Cue text is stored as plain text: every tag (`<b>`, `<i>`, `<script>`, `<font ...>`, ASS
`{\\an8}` overrides) is removed and entities are decoded, then `&`, `<` and `>` are escaped again
for WebVTT. Players differ in which WebVTT tags they honour and how; plain text looks the same
everywhere and can never become markup in a page.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import langcodes

from tasks import ffmpeg

MAX_CAPTION_BYTES = 2 * 1024 * 1024  # a feature film's subtitles are ~100 KB
MAX_CUES = 20_000
MAX_CUE_CHARS = 1000
MAX_CHAPTERS = 500
MAX_CHAPTER_TITLE = 100
MAX_LABEL = 100

# The MPEG-TS muxer ffmpeg's packager uses starts presentation timestamps at 1.4 s (its default
# mux delay), and the first video frame of a published rendition carries exactly that PTS:
# 126000 in 90 kHz units (measured with ffprobe on published renditions; the transcode test
# checks it on every run). HLS WebVTT segments map cue time 0 to that PTS with
# X-TIMESTAMP-MAP, so a cue at 5.0 s shows with the frame at 5.0 s.
TS_FIRST_PTS = 126000

TEXT_SUBTITLE_CODECS = {"mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text"}
IMAGE_SUBTITLE_CODECS = {
    "hdmv_pgs_subtitle": "PGS (Blu-ray) subtitles are pictures, not text",
    "dvd_subtitle": "VobSub (DVD) subtitles are pictures, not text",
    "dvb_subtitle": "DVB subtitles are pictures, not text",
    "xsub": "XSUB subtitles are pictures, not text",
    "dvb_teletext": "teletext subtitles need a teletext decoder",
}

_BCP47 = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}")


class CaptionError(ValueError):
    """A caption or chapter list that cannot be used; the message says what to fix."""


@dataclass
class Cue:
    start: float
    end: float
    text: str


@dataclass
class CleanedCaptions:
    cues: list[Cue]
    format: str  # "srt" | "webvtt"
    encoding: str
    changes: list[str] = field(default_factory=list)  # what was changed, for the answer
    dropped: list[dict] = field(default_factory=list)  # {"line", "reason"} per dropped cue

    def report(self) -> dict:
        return {"cues": len(self.cues), "format": self.format, "encoding": self.encoding,
                "changes": self.changes, "dropped": self.dropped}


def normalize_language(tag: str | None) -> str:
    """A BCP 47 tag from what a person or a container gives: 'eng' -> 'en', 'pt_BR' -> 'pt-BR'.
    Raises CaptionError for something that is not a language tag."""
    text = (tag or "").strip().replace("_", "-")
    if not text:
        raise CaptionError("a language is required: a BCP 47 tag such as 'en', 'fr' or 'pt-BR'")
    if not _BCP47.fullmatch(text):
        raise CaptionError(f"'{tag[:40]}' is not a BCP 47 language tag; use one such as 'en', 'fr' or 'pt-BR'")
    try:
        # CLDR's rules: the shortest code (ISO 639-2 'eng', 'fre', 'ger' -> 'en', 'fr', 'de'),
        # case by part ('zh-hant-tw' -> 'zh-Hant-TW'), deprecated tags replaced
        return langcodes.standardize_tag(text)
    except langcodes.LanguageTagError as exc:
        raise CaptionError(f"'{tag[:40]}' is not a BCP 47 language tag ({exc}); "
                           "use one such as 'en', 'fr' or 'pt-BR'") from None


def language_name(tag: str) -> str:
    """A language's name in itself, as a track menu shows it: 'fr' -> 'Français', 'pt-BR' ->
    'Português (Brasil)'. The tag itself when CLDR does not know it."""
    lang = langcodes.Language.get(tag)
    if not lang.is_valid() or lang.language in (None, "und"):
        return tag
    name = lang.autonym()
    return name[:1].upper() + name[1:]


# ---------------------------------------------------------------- decoding

def decode(data: bytes, *, vtt_expected: bool = False) -> tuple[str, str, list[str]]:
    """(text, encoding, notes). UTF-8 with or without BOM, UTF-16 with BOM; other SRT files are
    read as Windows-1252 (the usual legacy encoding) and the answer says so."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict"), "utf-8 (with BOM)", []
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16", ["converted from UTF-16 to UTF-8"]
        except UnicodeDecodeError:
            raise CaptionError("the file starts with a UTF-16 byte order mark but is not valid UTF-16; "
                               "save it again as UTF-8") from None
    if b"\x00" in data:
        raise CaptionError("the file contains NUL bytes: it is UTF-16 without a byte order mark, or not a "
                           "text file; save it as UTF-8")
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as exc:
        if vtt_expected or data.lstrip().startswith(b"WEBVTT"):
            raise CaptionError(f"WebVTT files must be UTF-8, and byte {exc.start} is not; save the file as "
                               "UTF-8") from None
    try:
        return data.decode("cp1252"), "cp1252", [
            "the file is not UTF-8: it was read as Windows-1252 (Western European); if accented letters "
            "look wrong, save it as UTF-8 and upload it again"]
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1", [
            "the file is not UTF-8: it was read as ISO-8859-1 (Latin-1); if accented letters look wrong, "
            "save it as UTF-8 and upload it again"]


# ---------------------------------------------------------------- parsing

_TIME = r"(-?)(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>\n]*>")
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _seconds(sign: str, h: str | None, m: str, s: str, ms: str | None) -> float:
    value = int(h or 0) * 3600 + int(m) * 60 + int(s) + (int((ms or "0").ljust(3, "0")) / 1000)
    return -value if sign else value


def clean_text(text: str) -> tuple[str, bool]:
    """Plain text of a cue: (text, whether markup was removed). Script blocks lose their body
    too; entities are decoded; control characters and blank lines go."""
    original = text
    text = re.sub(r"<(script|style)\b[^>]*>.*?</\1\s*>", "", text, flags=re.IGNORECASE | re.DOTALL)
    text = _ASS_OVERRIDE.sub("", text)
    text = _TAG.sub("", text)
    text = html.unescape(text).replace("\\N", "\n").replace("\u00a0", " ")
    text = _CONTROL.sub("", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(line for line in lines if line)
    return text, text != "\n".join(" ".join(line.split()) for line in original.split("\n") if line.strip())


def parse_captions(text: str, *, encoding: str = "utf-8", duration: float | None = None) -> CleanedCaptions:
    """Read SRT or WebVTT text, keep what can be kept, and say what was changed. Raises
    CaptionError when nothing usable is left, or the file is neither format."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    first = text.lstrip("\n").split("\n", 1)[0]
    is_vtt = first.startswith("WEBVTT")
    if is_vtt and len(first) > 6 and first[6] not in " \t":
        raise CaptionError("the first line must be 'WEBVTT' (optionally followed by a space and text)")
    if not is_vtt and "-->" not in text:
        raise CaptionError("this is neither SRT nor WebVTT: no cue timing line ('00:00:01,000 --> "
                           "00:00:02,000') was found")
    result = CleanedCaptions([], "webvtt" if is_vtt else "srt", encoding)
    line_no = 1
    marked = 0
    blocks = re.split(r"(\n[ \t]*\n)", text)
    for i in range(0, len(blocks), 2):
        block = blocks[i]
        start_line = line_no + (len(block) - len(block.lstrip("\n")))
        line_no += block.count("\n") + (blocks[i + 1].count("\n") if i + 1 < len(blocks) else 0)
        lines = block.strip("\n").split("\n")
        if not block.strip():
            continue
        if is_vtt and (lines[0].startswith(("WEBVTT", "NOTE", "STYLE", "REGION")) and "-->" not in lines[0]):
            continue
        timing_at = next((k for k, line in enumerate(lines[:3]) if "-->" in line), None)
        if timing_at is None:
            result.dropped.append({"line": start_line, "reason": "no timing line ('start --> end') in this block"})
            continue
        at = start_line + timing_at
        m = _TIMING.match(lines[timing_at])
        if not m:
            result.dropped.append({"line": at, "reason": f"unreadable timing line '{lines[timing_at][:60]}'"})
            continue
        g = m.groups()
        start, end = _seconds(*g[:5]), _seconds(*g[5:])
        if (int(g[3]) > 59 or int(g[8]) > 59 or (g[1] is not None and int(g[2]) > 59)
                or (g[6] is not None and int(g[7]) > 59)):
            result.dropped.append({"line": at, "reason": "minutes or seconds above 59"})
            continue
        if start < 0 or end < 0:
            result.dropped.append({"line": at, "reason": "negative time"})
            continue
        if end <= start:
            result.dropped.append({"line": at, "reason": f"ends ({end:.3f} s) before it starts ({start:.3f} s)"})
            continue
        if duration and start >= duration:
            result.dropped.append({"line": at, "reason": f"starts at {start:.3f} s, after the video's end "
                                                         f"({duration:.3f} s)"})
            continue
        body, had_markup = clean_text("\n".join(lines[timing_at + 1:]))
        if not body:
            result.dropped.append({"line": at, "reason": "no text" + (" once markup was removed" if had_markup else "")})
            continue
        if len(body) > MAX_CUE_CHARS:
            body = body[:MAX_CUE_CHARS]
            result.changes.append(f"line {at}: text cut to {MAX_CUE_CHARS} characters")
        marked += had_markup
        if duration and end > duration:
            end = duration
        result.cues.append(Cue(start, end, body))
        if len(result.cues) > MAX_CUES:
            raise CaptionError(f"more than {MAX_CUES} cues; split the file")
    if not result.cues:
        why = "; ".join(f"line {d['line']}: {d['reason']}" for d in result.dropped[:5])
        raise CaptionError("no usable cue in the file" + (f" ({why})" if why else ""))
    out_of_order = sum(1 for a, b in zip(result.cues, result.cues[1:]) if b.start < a.start)
    if out_of_order:
        result.cues.sort(key=lambda c: (c.start, c.end))
        result.changes.append(f"{out_of_order} cue(s) out of order were put in time order")
    overlaps = sum(1 for a, b in zip(result.cues, result.cues[1:]) if b.start < a.end)
    if overlaps:
        result.changes.append(f"{overlaps} cue(s) overlap the one before; kept (shown together)")
    if marked:
        result.changes.append(f"markup (HTML or styling tags) removed from {marked} cue(s): cues are plain text")
    if result.dropped:
        result.changes.append(f"{len(result.dropped)} cue(s) dropped (see 'dropped')")
    return result


def read_caption_file(data: bytes, *, duration: float | None = None, filename: str = "") -> CleanedCaptions:
    """Bytes of an uploaded .srt/.vtt to cleaned cues (CaptionError with the reason when not)."""
    if len(data) > MAX_CAPTION_BYTES:
        raise CaptionError(f"the file is {len(data)} bytes; captions are limited to {MAX_CAPTION_BYTES} bytes")
    text, encoding, notes = decode(data, vtt_expected=filename.lower().endswith(".vtt"))
    result = parse_captions(text, encoding=encoding, duration=duration)
    result.changes[:0] = notes
    return result


# ---------------------------------------------------------------- writing

def _vtt_time(t: float) -> str:
    ms = int(round(max(0.0, t) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _vtt_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("-->", "--&gt;")


def cue_block(cue: Cue) -> str:
    return f"{_vtt_time(cue.start)} --> {_vtt_time(cue.end)}\n{_vtt_text(cue.text)}\n"


def whole_vtt(cues: list[Cue]) -> str:
    return "WEBVTT\n\n" + "\n".join(cue_block(c) for c in cues)


def segment_vtt(cues: list[Cue], *, duration: float, segment_seconds: float,
                mpegts: int = TS_FIRST_PTS) -> tuple[list[str], str]:
    """HLS subtitle rendition: (segment texts, media playlist). Segment i covers
    [i*S, (i+1)*S); a cue spanning a boundary is repeated in each segment it touches (RFC 8216
    §3.5 lets a cue appear in several segments; players drop the duplicates). Each segment maps
    cue time 0 to the video's first PTS with X-TIMESTAMP-MAP, cue times stay absolute."""
    duration = max(duration, max((c.end for c in cues), default=0.0), 0.001)
    count = max(1, math.ceil(duration / segment_seconds - 1e-9))
    header = f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{int(mpegts)},LOCAL:00:00:00.000\n\n"
    segments, durations = [], []
    for i in range(count):
        lo, hi = i * segment_seconds, min((i + 1) * segment_seconds, duration)
        inside = [c for c in cues if c.start < hi and c.end > lo]
        segments.append(header + "\n".join(cue_block(c) for c in inside))
        durations.append(hi - lo)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(segment_seconds)}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i, d in enumerate(durations):
        lines += [f"#EXTINF:{d:.6f},", segment_name(i)]
    lines.append("#EXT-X-ENDLIST")
    return segments, "\n".join(lines) + "\n"


def segment_name(i: int) -> str:
    return f"seg_{i:05d}.vtt"


# ---------------------------------------------------------------- chapters

@dataclass
class Chapter:
    start: float
    end: float
    title: str

    def to_dict(self) -> dict:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "title": self.title}


def clean_title(title: object, what: str) -> str:
    if not isinstance(title, str):
        raise CaptionError(f"{what}: 'title' must be a string")
    text, _ = clean_text(title)
    text = " ".join(text.split())
    if not text:
        raise CaptionError(f"{what}: the title is empty (once markup is removed)")
    return text[:MAX_CHAPTER_TITLE]


def check_chapters(items: object, duration: float | None) -> list[Chapter]:
    """A chapter list from JSON [{start, title}, ...]: starts in seconds, strictly increasing,
    inside the video; titles as plain text. Each chapter ends where the next starts."""
    if not isinstance(items, list):
        raise CaptionError("the body must be a JSON list of {\"start\": seconds, \"title\": text}")
    if len(items) > MAX_CHAPTERS:
        raise CaptionError(f"{len(items)} chapters; at most {MAX_CHAPTERS}")
    starts, titles = [], []
    for i, item in enumerate(items):
        what = f"chapter {i + 1}"
        if not isinstance(item, dict) or set(item) - {"start", "title"} or "start" not in item or "title" not in item:
            raise CaptionError(f"{what}: expected an object with exactly 'start' and 'title'")
        start = item["start"]
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
            raise CaptionError(f"{what}: 'start' must be a number of seconds, 0 or more")
        if duration and start >= duration:
            raise CaptionError(f"{what}: starts at {start} s, at or after the end of the video ({duration:.3f} s)")
        if starts and start <= starts[-1]:
            raise CaptionError(f"{what}: starts at {start} s, not after chapter {i} ({starts[-1]} s); "
                               "list chapters in time order, each with its own start")
        starts.append(float(start))
        titles.append(clean_title(item["title"], what))
    end = duration or (starts[-1] + 1 if starts else 0)
    ends = starts[1:] + [end]
    return [Chapter(s, e, t) for s, e, t in zip(starts, ends, titles)]


def chapters_vtt(chapters: list[Chapter]) -> str:
    """A WebVTT chapters track (HTML `<track kind=chapters>`): one cue per chapter, its title."""
    return "WEBVTT\n\n" + "\n".join(f"{i + 1}\n" + cue_block(Cue(c.start, c.end, c.title))
                                     for i, c in enumerate(chapters))


# ---------------------------------------------------------------- sources

def probe_text_tracks(path: str, *, timeout: float) -> dict:
    """Subtitle streams and chapters of a local source, from ffprobe: {"streams": [...],
    "chapters": [...]}; each stream has its subtitle-relative index `n` (for `-map 0:s:n`)."""
    data = ffmpeg.probe_json(path, timeout=timeout, extra=["-show_chapters"])
    streams = []
    for s in data.get("streams", []):
        if s.get("codec_type") != "subtitle":
            continue
        tags = {k.lower(): v for k, v in (s.get("tags") or {}).items()}
        disp = s.get("disposition") or {}
        streams.append({"n": len(streams), "index": s.get("index"), "codec": s.get("codec_name") or "unknown",
                        "language": tags.get("language"), "title": tags.get("title") or tags.get("handler_name"),
                        "default": bool(disp.get("default")), "forced": bool(disp.get("forced"))})
    # cue and chapter times count from the container's zero; the published timeline from the
    # first video frame (what X-TIMESTAMP-MAP's LOCAL 0 stands for)
    video = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"), {})
    try:
        video_start = max(0.0, float(video.get("start_time") or 0.0))
    except ValueError:
        video_start = 0.0
    chapters = []
    for c in data.get("chapters", []):
        try:
            start = float(c["start_time"])
        except (KeyError, TypeError, ValueError):
            continue
        title = ((c.get("tags") or {}).get("title") or "").strip()
        chapters.append({"start": start, "end": float(c.get("end_time") or start), "title": title})
    return {"streams": streams, "chapters": chapters, "video_start": video_start}


def shift_cues(cues: list[Cue], by: float) -> list[Cue]:
    """Cues moved `by` seconds earlier; what would start before 0 starts at 0, what would end
    by then is dropped."""
    out = []
    for c in cues:
        end = c.end - by
        if end > 0:
            out.append(Cue(max(0.0, c.start - by), end, c.text))
    return out


def extract_stream_vtt(path: str, n: int, out_path: str, *, timeout: float) -> None:
    """The n-th subtitle stream of a local source as one WebVTT file (ffmpeg's own converters
    for mov_text, SubRip, ASS/SSA and WebVTT)."""
    ffmpeg.run([*ffmpeg.SAFE_INPUT, "-i", path, "-map", f"0:s:{n}", "-c:s", "webvtt", "-f", "webvtt", out_path],
               timeout=timeout, what=f"extract subtitle stream {n}")
