"""Publishing a run chunk by chunk: growing playlists, the catalog rows behind the master, and
the whole-rung arithmetic that finishes a rung without reading it again.

Chunk encodes store their checked segments under the run's folder; nothing lists them until
this publisher does. Each rung's playlist lists the longest contiguous prefix of finished
chunks (`EXT-X-PLAYLIST-TYPE:EVENT`, no `EXT-X-ENDLIST`); the audio rendition lists the segments
its task has closed. The catalog rows (status GROWING, `available_seconds`) tell the master
which rungs to list and the API how far each one goes. When every chunk is in, each rung is
checked by arithmetic over what the chunks measured (frame totals, segment counts, durations)
and its playlist is rewritten as a finished VOD playlist.

Order of writes, so a reader never sees a reference to something missing: segments (written by
the tasks) before the playlist that lists them, the playlist before the catalog row that makes
the master list the rung.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from prefect.artifacts import create_markdown_artifact

from catalog.models import RenditionStatus
from catalog.runs import save_renditions
from config import links, storage
from tasks.lane import LANE
from tasks.package import (
    AUDIO_CODECS,
    MARKERS,
    marker_url,
    PLAYLIST,
    audio_peak,
    bit_rates,
    check_rung_totals,
    is_fmp4,
    media_playlist,
    rung_codecs,
    segment_durations,
    target_duration,
)

log = logging.getLogger(__name__)


@dataclass
class RungState:
    rung: dict
    frames: list = field(default_factory=list)  # per published segment
    sizes: list = field(default_factory=list)
    failed: str | None = None
    level: int | None = None
    finished: bool = False  # its playlist is VOD + ENDLIST already (the fast lane's rung)
    init: str | None = None  # fragmented MP4: digest of the first chunk's init segment
    codecs: str | None = None  # fragmented MP4: the video CODECS its init segment declares


@dataclass
class Publisher:
    video_id: str
    run: str
    hls_url: str
    rungs: list[dict]
    plan: dict
    audio: list[dict]  # the audio group's renditions (`tasks.audio.audio_renditions`), main first
    frame_rate: float
    make_current: bool  # a first transcode: the master lists this run while it grows
    owner: str | None = None
    logger: logging.Logger = log
    lane: str | None = None  # the rung the fast lane encodes (`tasks.lane`), fed by `lane_done`

    def __post_init__(self):
        self.durations = segment_durations(self.plan["segment_times"], self.plan["duration"])
        self.target = target_duration(self.durations)
        self.state = {r["name"]: RungState(r) for r in self.rungs}
        self.results: dict[int, dict] = {}  # chunk index -> encode result
        self.prefix = 0  # chunks published, from the first
        self.segments = 0  # segments published per rung
        self.audio_segments = 0  # published, the same count in every audio rendition
        self.audio_sizes: dict[str, list[int]] = {a["name"]: [] for a in self.audio}
        self.audio_failed: str | None = None
        self.audio_dropped: dict[str, str] = {}  # label -> why, of tracks the audio task left out
        self.lane_segments: dict[int, tuple] = {}  # segment index -> (frames, size, level), not yet contiguous
        self.audio_finished = False

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    # -- what arrives -----------------------------------------------------------------------

    def chunk_done(self, index: int, result: dict) -> None:
        """A chunk encode of the ladder (every rung but the lane's) is stored and checked."""
        self.results[index] = result
        advanced = False
        chunks = self.plan["chunks"]
        while self.prefix < len(chunks) and self.prefix in self.results:
            self._take(self.prefix, self.results[self.prefix], [n for n in self.state if n != self.lane])
            self.segments += len(chunks[self.prefix]["segment_frames"])
            self.prefix += 1
            advanced = True
        if advanced:
            self._publish_video(final=False)

    def lane_segment(self, index: int, frames: int, size: int, level=None, *, publish: bool = True) -> None:
        """The fast lane stored segment `index` of its rung, checked. Published as soon as it
        extends the contiguous prefix; repeats are ignored."""
        if self.lane is None:
            return
        st = self.state[self.lane]
        if st.failed or index < len(st.frames) or index in self.lane_segments:
            return
        self.lane_segments[index] = (int(frames), int(size), level)
        advanced = False
        while len(st.frames) in self.lane_segments:
            f, sz, lv = self.lane_segments.pop(len(st.frames))
            st.frames.append(f)
            st.sizes.append(sz)
            st.level = lv if lv is not None else st.level
            advanced = True
        if advanced and publish:
            self._publish_video(final=False)

    def lane_done(self, index: int, result: dict, *, publish: bool = True) -> None:
        """The lane rung's segments of chunk `index` are stored and checked (a result of the fast
        lane, resumed or reported, or of a chunk encode of that rung alone)."""
        if self.lane is None:
            return
        c = self.plan["chunks"][index]
        check = result["rungs"].get(self.lane) or {"ok": False, "reasons": ["no output"]}
        st = self.state[self.lane]
        if not check["ok"]:
            st.failed = st.failed or self._chunk_failure(index, check)
            return
        before = len(st.frames)
        for k, (f, sz) in enumerate(zip(check["frames"], check["sizes"])):
            self.lane_segment(int(c["first_segment"]) + k, f, sz, check.get("level"), publish=False)
        if len(st.frames) > before and publish:
            self._publish_video(final=False)

    @property
    def lane_complete(self) -> bool:
        st = self.state.get(self.lane) if self.lane else None
        return bool(st and not st.failed and len(st.frames) == len(self.durations))

    def finish_lane(self) -> None:
        """The fast lane's rung is whole: check it by arithmetic and finish its playlist (VOD +
        ENDLIST, READY) now, so a viewer who plays it to the end while the other rungs encode
        sees the video end, not wait at its edge (with the audio, `finish_audio`)."""
        st = self.state[self.lane]
        reasons = self._rung_reasons(st)
        if reasons:
            st.failed = "; ".join(reasons)
            return
        st.finished = True
        self._write_playlist(self.lane, len(st.frames), final=True)
        save_renditions(self.video_id, self.run, [self._video_row(st, RenditionStatus.READY, len(st.frames))],
                        make_current=self.make_current, owner=self.owner)
        self.logger.info("published %s whole (%d segments) ahead of the other rungs", self.lane, len(st.frames))

    def finish_audio(self, result: dict) -> None:
        """The audio is whole (and a video rung is, the fast lane's): finish its playlist now."""
        if not self.has_audio or self.audio_failed or self.audio_finished:
            return
        self.audio_done(result)
        if self.audio_segments != len(self.durations):
            return
        self._write_audio_playlists(final=True)
        self.audio_finished = True
        save_renditions(self.video_id, self.run, self._audio_rows(RenditionStatus.READY), owner=self.owner)

    @property
    def published_anything(self) -> bool:
        return any(st.frames for st in self.state.values())

    def _chunk_failure(self, index: int, check: dict) -> str:
        chunks = self.plan["chunks"]
        c = chunks[index]
        return f"chunk {index + 1}/{len(chunks)} ({c['start']:.3f}-{c['end']:.3f} s): " + "; ".join(check["reasons"])

    def _rung_reasons(self, st: RungState) -> list[str]:
        """The whole-rung arithmetic over what the chunks measured (no re-read of the rung)."""
        plan = self.plan
        return check_rung_totals(st.rung["name"], st.frames, plan["frames"], len(plan["segment_starts"]),
                                 self.durations[:len(st.frames)], plan["duration"])

    def _take(self, index: int, res: dict, names: list[str]) -> None:
        for name in names:
            st = self.state[name]
            check = res["rungs"].get(name) or {"ok": False, "reasons": ["no output"]}
            if st.failed:
                continue
            if not check["ok"]:
                st.failed = self._chunk_failure(index, check)
                continue
            if check.get("init"):
                if st.init is None:
                    st.init, st.codecs = check["init"], check.get("codecs")
                elif check["init"] != st.init:
                    # one EXT-X-MAP serves the rung: a chunk with other stream headers cannot join it
                    st.failed = self._chunk_failure(index, {"reasons": [
                        "its init segment (stream headers) differs from the first chunk's"]})
                    continue
            st.frames += check["frames"]
            st.sizes += check["sizes"]
            st.level = check.get("level", st.level)

    def audio_progress(self, segments: int) -> None:
        if not self.has_audio or self.audio_failed or self.audio_finished or segments <= self.audio_segments:
            return
        self.audio_segments = min(segments, len(self.durations))
        self._write_audio_playlists(final=False)
        save_renditions(self.video_id, self.run, self._audio_rows(RenditionStatus.GROWING), owner=self.owner)

    def audio_done(self, result: dict | None, failure: str | None = None) -> None:
        if failure is not None or result is None:
            self.audio_failed = failure or "no audio"
            return
        tracks = result.get("tracks") or {self.audio[0]["name"]: result["segment_sizes"]}
        gone = [a for a in self.audio if a["name"] not in tracks]
        if gone:
            # tracks the task had to leave out (`tasks.audio`): withdrawn from the group, the rest plays
            why = result.get("dropped") or {}
            self.audio = [a for a in self.audio if a["name"] in tracks]
            self.audio_dropped.update({a["label"]: why.get(a["name"], "not encoded") for a in gone})
            save_renditions(self.video_id, self.run, [
                {"name": a["name"], "kind": "audio", "status": RenditionStatus.FAILED, "available_seconds": None,
                 "error": why.get(a["name"], "not encoded")[:2000]} for a in gone], owner=self.owner)
            for a in gone:
                storage.delete(storage.join(self.hls_url, a["name"]))
        self.audio_sizes = {a["name"]: list(tracks[a["name"]]) for a in self.audio}
        self.audio_segments = min(len(v) for v in self.audio_sizes.values())

    # -- publishing -------------------------------------------------------------------------

    @property
    def available_seconds(self) -> float:
        return float(sum(self.durations[:self.segments]))

    def _write_playlist(self, name: str, count: int, *, final: bool) -> str:
        url = storage.join(self.hls_url, name, PLAYLIST)
        fmp4 = is_fmp4(self.state[name].rung) if name in self.state else False
        storage.write_text(url, media_playlist(self.durations, count, final=final, target=self.target, fmp4=fmp4))
        return url

    def _write_audio_playlists(self, *, final: bool) -> None:
        for a in self.audio:
            self._write_playlist(a["name"], self.audio_segments, final=final)

    def _audio_rows(self, status: RenditionStatus) -> list[dict]:
        count = self.audio_segments
        rows = []
        for a in self.audio:
            sizes = self.audio_sizes[a["name"]]
            peak, average = bit_rates(sizes, self.durations[:len(sizes)])
            rows.append({"name": a["name"], "kind": "audio", "width": 0, "height": 0, "codecs": AUDIO_CODECS,
                         "bandwidth": peak or None, "average_bandwidth": average or None, "segment_count": count,
                         "available_seconds": round(float(sum(self.durations[:count])), 6),
                         "playlist_url": storage.join(self.hls_url, a["name"], PLAYLIST), "status": status,
                         "language": a["language"], "label": a["label"], "is_default": a["default"],
                         "role": a["role"], "characteristics": a["characteristics"]})
        return rows

    def _video_row(self, st: RungState, status: RenditionStatus, count: int) -> dict:
        r = st.rung
        peak, average = bit_rates(st.sizes, self.durations[:len(st.sizes)])
        with_audio = self.has_audio and not self.audio_failed
        if with_audio:
            # BANDWIDTH covers the whole variant: this rung and the audio it references, the
            # most demanding rendition of the group (RFC 8216 section 4.3.4.2)
            peak += max(audio_peak(v, self.durations[:len(v)]) for v in self.audio_sizes.values())
            average += max(bit_rates(v, self.durations[:len(v)])[1] or 0 for v in self.audio_sizes.values())
        return {"name": r["name"], "kind": "video", "width": r["width"], "height": r["height"],
                "bandwidth": peak, "average_bandwidth": average, "codecs": rung_codecs(r, with_audio, st.codecs),
                "frame_rate": self.frame_rate, "segment_count": count,
                "available_seconds": round(float(sum(self.durations[:count])), 6),
                "playlist_url": storage.join(self.hls_url, r["name"], PLAYLIST), "status": status, "error": None}

    def publish(self) -> None:
        """Write the growing playlists and rows of what is known so far."""
        self._publish_video(final=False)

    def _publish_video(self, *, final: bool) -> None:
        rows = []
        if self.has_audio and not self.audio_failed and not self.audio_finished:
            # the audio group is in the master from the first variant on (a player that loaded
            # the master without it would play silent); its playlist may still be empty
            self._write_audio_playlists(final=False)
            rows += self._audio_rows(RenditionStatus.GROWING)
        for st in self.state.values():
            if st.failed or not st.frames or st.finished:
                continue
            self._write_playlist(st.rung["name"], len(st.frames), final=final)
            rows.append(self._video_row(st, RenditionStatus.READY if final else RenditionStatus.GROWING,
                                        len(st.frames)))
        if rows:
            save_renditions(self.video_id, self.run, rows, make_current=self.make_current, owner=self.owner)
            self.logger.info("published %.1f s of %.1f s (%d/%d chunks) in %s", self.available_seconds,
                             self.plan["duration"], self.prefix, len(self.plan["chunks"]),
                             ", ".join(r["name"] for r in rows))

    # -- the end ----------------------------------------------------------------------------

    def finish(self, *, closed_early: str | None = None) -> dict[str, dict]:
        """Every chunk is in (or, with `closed_early`, the run stops at the published prefix):
        check each rung by arithmetic, rewrite the playlists as finished VOD playlists, mark the
        rows READY or FAILED. Returns {rung: {"ok", "reason"}}."""
        results: dict[str, dict] = {}
        rows = []
        for name, st in self.state.items():
            if st.failed is None and closed_early is None:
                reasons = self._rung_reasons(st)
                if reasons:
                    st.failed = "; ".join(reasons)
            if st.failed is not None or not st.frames:
                reason = st.failed or closed_early or "nothing was published"
                results[name] = {"ok": False, "reason": reason}
                rows.append({"name": name, "width": st.rung["width"], "height": st.rung["height"],
                             "status": RenditionStatus.FAILED, "error": reason[:2000], "available_seconds": None})
                continue
            results[name] = {"ok": True, "measured": {"frames": sum(st.frames), "segments": len(st.frames),
                                                      "level": st.level}}
        if self.has_audio and not self.audio_failed and self.audio_segments:
            # closed early: the audio as far as the longest video rung goes (the fast lane's may be whole)
            longest = max([len(st.frames) for st in self.state.values() if not st.failed] + [self.segments])
            count = self.audio_segments if closed_early is None else min(self.audio_segments, longest)
            self.audio_segments = count
            self._write_audio_playlists(final=True)
            rows += self._audio_rows(RenditionStatus.READY)
        elif self.has_audio:
            rows += [{"name": a["name"], "kind": "audio", "status": RenditionStatus.FAILED,
                      "error": (self.audio_failed or "no audio segments")[:2000], "available_seconds": None}
                     for a in self.audio]
        for name, st in self.state.items():
            if results[name]["ok"]:
                count = len(st.frames)
                self._write_playlist(name, count, final=True)
                rows.append(self._video_row(st, RenditionStatus.READY, count))
        save_renditions(self.video_id, self.run, rows, owner=self.owner)
        return results

    def summary(self) -> dict[str, dict]:
        """Per rung: segments, bit rates and codecs, for the ladder artifact."""
        out = {}
        for name, st in self.state.items():
            row = self._video_row(st, RenditionStatus.READY, len(st.frames))
            out[name] = {"bandwidth": row["bandwidth"], "average_bandwidth": row["average_bandwidth"],
                         "codecs": row["codecs"], "segments": len(st.frames)}
        return out


# -- resuming a run that never finished -------------------------------------------------------
#
# A run keeps, in its own folder, what a later run needs to carry on where it stopped: the plan
# it encodes (`plan.json`, with the ladder and the settings it was made for) and, per chunk whose
# segments are stored and checked, the chunk's result (`chunks/NNNNN.json`, written by the chunk
# task itself after its segments). A re-dispatch after a crash reuses the run, publishes those
# chunks again from their results, and encodes only the others. Neither file is ever served.

PLAN_FILE = "plan.json"


def plan_settings(settings) -> dict:
    return {"keyframe_seconds": settings.keyframe_seconds, "segment_seconds": settings.segment_seconds}


def save_plan(hls_url: str, plan: dict, rungs: list[dict], settings) -> None:
    storage.write_text(storage.join(hls_url, PLAN_FILE),
                       json.dumps({"plan": plan, "rungs": rungs, "settings": plan_settings(settings)}))


def resave_plan(hls_url: str, plan: dict) -> None:
    """The saved plan, with what changed since `save_plan` (the slices written)."""
    url = storage.join(hls_url, PLAN_FILE)
    saved = json.loads(storage.read_text(url))
    storage.write_text(url, json.dumps({**saved, "plan": plan}))


def resumable_run(video_id: str) -> str | None:
    """The newest unfinished run of the video that saved a plan, if any. A finished run drops
    its plan; the current run may look published (its fast-lane rung READY) and still be one
    to carry on."""
    runs = [e["name"] for e in storage.list_dir(storage.url_for("hls", video_id))
            if e["type"] == "directory"]
    for run in sorted(runs, reverse=True):
        if storage.exists(storage.url_for("hls", video_id, run, PLAN_FILE)):
            return run
    return None


def resume_state(hls_url: str, rungs: list[dict], settings) -> tuple[dict, dict[int, dict], dict[int, dict]] | None:
    """(plan, {chunk index: result}, {chunk index: the fast lane's result}) of the run at
    `hls_url` when it can be carried on: its plan was made for this ladder and these settings.
    Chunks planned as stream-copy slices whose slice is gone (the scratch space went with a
    stopped process) are read from the source."""
    try:
        saved = json.loads(storage.read_text(storage.join(hls_url, PLAN_FILE)))
    except (FileNotFoundError, ValueError):
        return None
    if saved.get("rungs") != rungs or saved.get("settings") != plan_settings(settings):
        return None
    plan = saved["plan"]
    for c in plan["chunks"]:
        if c["mode"] == "copy" and not (c.get("url") and storage.exists(c["url"])):
            c.update(mode="seek", url=None, reason="its stream-copy slice went with the stopped run")
    done: dict[int, dict] = {}
    lane: dict[int, dict] = {}
    for c in plan["chunks"]:
        for kind, into in (("", done), (LANE, lane)):
            if kind and not plan.get("lane"):
                continue
            try:
                into[c["index"]] = json.loads(storage.read_text(marker_url(hls_url, c["index"], kind)))
            except (FileNotFoundError, ValueError):
                continue
    return plan, done, lane


def drop_resume_files(hls_url: str) -> None:
    """A finished run is never resumed: its plan and chunk results go."""
    storage.delete(storage.join(hls_url, MARKERS))
    storage.delete(storage.join(hls_url, PLAN_FILE))


def ladder_artifact(video_id, run, rungs, packaged, results, status, *, timing="container",
                     chunk_modes=None, fallbacks=()) -> None:
    watch = links.watch_url(video_id)
    modes = {}
    for m in (chunk_modes or {}).values():
        modes[m] = modes.get(m, 0) + 1
    how = (f"Timing from {'decoded frames' if timing == 'decoded' else 'container timestamps'}; "
           f"{len(chunk_modes or {})} chunks: " + ", ".join(f"{k} {v}" for k, v in modes.items()))
    lines = [f"## Video `{video_id}`: {status.value}", "", f"Run `{run}` · [watch it]({watch})", "", how, "",
             *[f"- {f}" for f in fallbacks], *([""] if fallbacks else []),
             "| rung | resolution | level | peak kb/s | average kb/s | codecs | segments | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rungs:
        p = packaged.get(r["name"], {})
        res = results.get(r["name"], {})
        state = "published" if res.get("ok") else f"failed: {res.get('reason', '')[:120]}"
        lines.append(f"| {r['name']} | {r['width']}x{r['height']} | {r['level']} | "
                     f"{p.get('bandwidth', 0) / 1000:.0f} | {p.get('average_bandwidth', 0) / 1000:.0f} | "
                     f"{p.get('codecs', '')} | {p.get('segments', 0)} | {state} |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=f"ladder-{video_id}",
                                 description=f"ladder of video {video_id}")
    except Exception:  # noqa: BLE001
        log.debug("markdown artifact failed", exc_info=True)
