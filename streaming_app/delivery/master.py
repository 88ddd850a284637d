"""The master playlist, built from the renditions the catalog says are published."""

from __future__ import annotations

from catalog.models import Rendition


def render_master(renditions: list[Rendition]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in sorted(renditions, key=lambda r: (r.bandwidth or 0, r.height)):
        attrs = [f"BANDWIDTH={int(r.bandwidth or 0)}"]
        if r.average_bandwidth:
            attrs.append(f"AVERAGE-BANDWIDTH={int(r.average_bandwidth)}")
        if r.codecs:
            attrs.append(f'CODECS="{r.codecs}"')
        attrs.append(f"RESOLUTION={r.width}x{r.height}")
        if r.frame_rate:
            attrs.append(f"FRAME-RATE={r.frame_rate:.3f}")
        attrs.append(f'NAME="{r.name}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{r.run}/{r.name}/index.m3u8")
    return "\n".join(lines) + "\n"
