"""Helpers for tests that need real media files: images, mp4 clips and audio written offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossan.data.catalogue import Catalogue, ItemRecord

GRAY_BASE, GRAY_STEP = 16, 8


def frame_gray(index: int) -> int:
    """The gray level that frame ``index`` of :func:`write_video` is filled with."""
    return GRAY_BASE + GRAY_STEP * index


def frame_index(frame: np.ndarray) -> int:
    """Recover a frame's index from its gray level."""
    return int(round((float(frame.mean()) - GRAY_BASE) / GRAY_STEP))


def write_video(path: Path, num_frames: int, size: int = 32, fps: int = 10, faststart: bool = False) -> Path:
    """An mp4 (H.264) whose frame i is a flat gray of level :func:`frame_gray` (i); ``faststart``: its index
    (moov) before the frames, as web video is stored, so a file cut short still opens."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for i in range(num_frames):
            img = np.full((size, size, 3), frame_gray(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, freq: float, rate: int, seconds: float) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), sine(freq, rate, seconds), rate)
    return path


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1.0 / rate)[int(spectrum.argmax())])


@dataclass
class FakeData:
    """What the cache needs of ``crossan.data.SequentialData``."""

    item_ids: list[str]
    catalogue: Catalogue

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1


def make_dataset(root: Path, n: int = 10, words: int = 4) -> FakeData:
    """``n`` items with varied media; some lack a modality (item 2: no text, 3: no image, 4: no video,
    5: no audio) so that presence masks are exercised."""
    records = []
    for i in range(1, n + 1):
        item = f"i{i}"
        text = "" if i == 2 else " ".join(f"word{(i * 7 + j) % 13} item{i}" for j in range(words))
        image = None if i == 3 else str(write_image(root / "img" / f"{item}.jpg", (20 * i % 256, 40, 200)).relative_to(root))
        video = None if i == 4 else str(write_video(root / "vid" / f"{item}.mp4", 3 + i % 20).relative_to(root))
        audio = None if i == 5 else str(write_wav(root / "aud" / f"{item}.wav", 200.0 + 50 * i, 8000, 0.6).relative_to(root))
        records.append(ItemRecord(item, text, image, video, audio))
    return FakeData([""] + [r.item_id for r in records], Catalogue(root, records))


def build_statuses(cfg: Any, data: FakeData, modalities: list[str]) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """``build_cache`` of ``modalities``: each one's status (built, up to date, …) and the (modality, batch)
    pairs it encoded, in order."""
    from crossan.cache import build_cache

    batches: list[tuple[str, int]] = []
    reports = build_cache(cfg, data, modalities, progress=False, on_batch=lambda m, b: batches.append((m, b)))
    return {m: r.status for m, r in reports.items()}, batches


def dataset_with_own_cache(tmp_path: Path, monkeypatch: Any) -> FakeData:
    """:func:`make_dataset` of 10 items, with ``$CROSSAN_CACHE_DIR`` in ``tmp_path`` (the caches of one test)."""
    monkeypatch.setenv("CROSSAN_CACHE_DIR", str(tmp_path / "caches"))
    return make_dataset(tmp_path / "data", n=10)
