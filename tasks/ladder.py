"""Choose the quality ladder for a source: never upscale, even sizes, square pixels.

Rungs are named by the short side of the displayed picture ("720p" is 1280x720 for landscape
and 720x1280 for portrait). Bit rates follow Apple's HLS authoring ladder; rate control is
capped quality (CRF with maxrate/bufsize), so easy content costs fewer bits than the cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.probe import MediaInfo

# short side -> (maxrate kb/s at 30 fps, H.264 level)
STANDARD_RUNGS: list[tuple[int, int, str]] = [
    (360, 1100, "3.0"),
    (480, 2000, "3.1"),
    (720, 4500, "4.0"),
    (1080, 7800, "4.2"),
    (1440, 14000, "5.1"),
    (2160, 25000, "5.1"),
]
AUDIO_BITRATE = 128_000
CRF = 23


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    maxrate: int  # bits/s
    bufsize: int  # bits
    crf: int
    profile: str
    level: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Rung":
        return cls(**d)

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def _level_for(short: int, fps: float, default: str) -> str:
    # 60 fps doubles the macroblock rate: 720p60 needs 4.1 (4.2 is allowed for 1080p60)
    if fps > 31:
        return {"3.0": "3.1", "3.1": "3.2", "4.0": "4.1"}.get(default, default)
    return default


def choose_ladder(info: MediaInfo) -> list[Rung]:
    """The rungs for this source, lowest first."""
    dw, dh = info.display_width, info.display_height
    landscape = dw >= dh
    short = min(dw, dh)
    aspect = dw / dh
    fps_factor = 1.5 if info.frame_rate > 31 else 1.0
    picks: list[tuple[int, int, str]] = [r for r in STANDARD_RUNGS if r[0] <= short]
    if not picks:
        base = STANDARD_RUNGS[0]
        picks = [(_even(short), base[1], base[2])]
    elif short > picks[-1][0] and picks[-1][0] < STANDARD_RUNGS[-1][0]:
        # the source's own size sits between two rungs: keep it as the top rung
        nxt = STANDARD_RUNGS[len(picks)]
        lo = picks[-1]
        frac = (short - lo[0]) / (nxt[0] - lo[0])
        picks.append((_even(short), int(lo[1] + frac * (nxt[1] - lo[1])), nxt[2]))
    rungs = []
    for side, maxrate_k, level in picks:
        side = min(side, _even(short)) if side > short else side
        long_side = _even(side * (aspect if landscape else 1 / aspect))
        width, height = (long_side, side) if landscape else (side, long_side)
        maxrate = int(maxrate_k * 1000 * fps_factor)
        rungs.append(
            Rung(
                name=f"{side}p",
                width=width,
                height=height,
                maxrate=maxrate,
                bufsize=2 * maxrate,
                crf=CRF,
                profile="high",
                level=_level_for(side, info.frame_rate, level),
            )
        )
    return rungs
