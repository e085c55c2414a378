"""Rendering and writing the synthetic media: covers (PNG), clips (mp4) and sounds (wav), each drawn from its
item's two latent attributes plus uninformative noise."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from crossan.data.synth.vocab import (
    _STREAM_AUDIO,
    _STREAM_IMAGE,
    _STREAM_VIDEO,
    AUDIO_RATE,
    AUDIO_SECONDS,
    COLOURS,
    IMAGE_SIZE,
    PITCHES,
    SPEEDS,
    TEMPOS,
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_SIZE,
)
from crossan.data.synth.world import _Items, _rng

# ------------------------------------------------------------------------------------------ media


def _media_path(modality: str, item_id: str) -> str:
    folder, ext = {"image": ("images", "png"), "video": ("videos", "mp4"), "audio": ("audio", "wav")}[
        modality
    ]
    return f"{folder}/{item_id}.{ext}"


def _video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _progress(iterable: Iterable[int], total: int, desc: str, enabled: bool) -> Iterable[int]:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def _write_media(root: Path, items: _Items, seed: int, codec: str, progress: bool) -> None:
    for folder in ("images", "videos", "audio"):
        (root / folder).mkdir()
    for k in _progress(range(len(items.ids)), len(items.ids), "synth media", progress):
        item_id = items.ids[k]
        if items.present[k, 1]:
            _write_image(
                root / _media_path("image", item_id),
                items.value(k, "image", "colour"),
                items.value(k, "image", "shape"),
                _rng(seed, _STREAM_IMAGE, k),
            )
        if items.present[k, 2]:
            _write_video(
                root / _media_path("video", item_id),
                items.value(k, "video", "motion"),
                items.value(k, "video", "speed"),
                _rng(seed, _STREAM_VIDEO, k),
                codec,
            )
        if items.present[k, 3]:
            _write_audio(
                root / _media_path("audio", item_id),
                items.value(k, "audio", "pitch"),
                items.value(k, "audio", "tempo"),
                _rng(seed, _STREAM_AUDIO, k),
            )


def _polygon(cx: float, cy: float, radii: list[float], start: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n))
        for i, r in enumerate(radii)
    ]


def render_image(colour: str, shape: str, rng: np.random.Generator) -> np.ndarray:
    """A cover: a ``colour`` ``shape`` on a light uninformative background, with jitter and noise; uint8 HxWx3."""
    from PIL import Image, ImageDraw

    s = IMAGE_SIZE
    base = int(rng.integers(175, 236))
    background = tuple(int(np.clip(base + d, 0, 255)) for d in rng.integers(-12, 13, size=3))
    fill = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLOURS[colour], rng.integers(-20, 21, size=3)))
    cx, cy = (s / 2 + float(rng.uniform(-s / 8, s / 8)) for _ in range(2))
    r = float(rng.uniform(0.22, 0.32)) * s
    turn = float(rng.uniform(-0.25, 0.25))
    img = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(3, round(r / 3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r * 1.1] * 4, math.pi / 4 + turn), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r * 1.15] * 3, -math.pi / 2 + turn), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.2, r * 0.5] * 5, -math.pi / 2 + turn), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 6.0, size=(s, s, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _write_image(path: Path, colour: str, shape: str, rng: np.random.Generator) -> None:
    from PIL import Image

    Image.fromarray(render_image(colour, shape, rng)).save(path, format="PNG")


def render_video(motion: str, speed: str, rng: np.random.Generator) -> np.ndarray:
    """Frames of a blob moving by ``motion`` at ``speed`` over a dark noisy background; uint8 TxHxWx3.

    Linear motions wrap around the frame edges; orbits circle the frame centre.
    """
    s, t = VIDEO_SIZE, VIDEO_FRAMES
    linear_step, angular_step = SPEEDS[speed]
    background = float(rng.integers(15, 60))
    colour = rng.integers(90, 256, size=3).astype(np.float64)
    radius = float(rng.uniform(6.0, 9.0))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    frames = np.empty((t, s, s, 3), dtype=np.uint8)
    if motion in ("clockwise", "anticlockwise"):
        orbit = float(rng.uniform(14.0, 20.0))
        angle0 = float(rng.uniform(0, 2 * math.pi))
        sign = 1.0 if motion == "clockwise" else -1.0  # image y grows downwards: +angle turns clockwise
        centres = [
            (
                s / 2 + orbit * math.cos(angle0 + sign * angular_step * f),
                s / 2 + orbit * math.sin(angle0 + sign * angular_step * f),
            )
            for f in range(t)
        ]
    else:
        dx, dy = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}[motion]
        x0, y0 = (float(rng.uniform(0, s)) for _ in range(2))
        centres = [(x0 + dx * linear_step * f, y0 + dy * linear_step * f) for f in range(t)]
    for f, (cx, cy) in enumerate(centres):
        ddx = (xx - cx + s / 2) % s - s / 2  # wrapped distances: the blob re-enters at the opposite edge
        ddy = (yy - cy + s / 2) % s - s / 2
        inside = (ddx**2 + ddy**2 <= radius**2)[..., None]
        frame = np.where(inside, colour, background) + rng.normal(0.0, 3.0, size=(s, s, 3))
        frames[f] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def _write_video(path: Path, motion: str, speed: str, rng: np.random.Generator, codec: str) -> None:
    import av

    frames = render_video(motion, speed, rng)
    # bit-exact muxing: no encoder tag, no creation time; single thread. libx264 at a constant quantiser:
    # CRF's rate control (floating point) gave other bytes for the same frames in a process in another state
    # (torch imported, flush-denormal mode set; GENERATOR_VERSION 2); a fixed QP gave the same bytes in all
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "qp": "23", "threads": "1"}
        else:
            stream.codec_context.bit_rate = 400_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_audio(pitch: str, tempo: str, rng: np.random.Generator) -> np.ndarray:
    """A tone at ``pitch`` pulsed at ``tempo`` beats per second, random phase/timbre, light noise; float32."""
    n = int(AUDIO_RATE * AUDIO_SECONDS)
    t = np.arange(n) / AUDIO_RATE
    freq, rate = PITCHES[pitch], TEMPOS[tempo]
    overtone = float(rng.uniform(0.0, 0.3))
    phase1, phase2 = rng.uniform(0, 2 * math.pi, size=2)
    tone = np.sin(2 * math.pi * freq * t + phase1) + overtone * np.sin(4 * math.pi * freq * t + phase2)
    tone /= 1.0 + overtone
    decay = min(0.12, 0.3 / rate)
    onsets = float(rng.uniform(0, 1 / rate)) + np.arange(int(AUDIO_SECONDS * rate) + 1) / rate
    envelope = np.zeros(n)
    for onset in onsets[onsets < AUDIO_SECONDS]:
        after = t >= onset
        envelope[after] += np.exp(-(t[after] - onset) / decay)
    signal = 0.6 * np.minimum(envelope, 1.0) * tone + rng.normal(0.0, 0.005, size=n)
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def _write_audio(path: Path, pitch: str, tempo: str, rng: np.random.Generator) -> None:
    import soundfile

    soundfile.write(str(path), render_audio(pitch, tempo, rng), AUDIO_RATE, subtype="PCM_16", format="WAV")


