"""Damaged and awkward media files (the third audit, 2026-12-01): a cut mp4 or wav is corrupt, not a shorter
clip; long audio is decoded only as far as it is kept; a path the file system cannot look up is a MediaError
naming the item; 16-bit PGM images are reduced to 8 bits as 16-bit PNGs are."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.media import MediaError, load_audio, load_image, load_video, read_audio, resample
from media_helpers import frame_index, sine, write_video, write_wav


@pytest.mark.parametrize("kept", [0.3, 0.6, 0.9])
def test_a_cut_faststart_mp4_is_corrupt_not_a_shorter_clip(tmp_path: Path, kept: float) -> None:
    """Frame threading ended a cut stream without an error, and the clip was sampled again from the frames
    before the cut (at 60%: frames [1, 5, 8, 12] of 30 instead of [3, 11, 18, 26]), reported present."""
    whole = write_video(tmp_path / "whole.mp4", 30, faststart=True)
    assert [frame_index(f) for f in load_video(whole, 4, "uniform", "w")] == [3, 11, 18, 26]
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.mp4.*not a readable video"):
        load_video(cut, 4, "uniform", "c")


def test_a_cut_video_is_counted_corrupt_by_the_encoders_loader(tmp_path: Path) -> None:
    from crossan.config import Config
    from crossan.encoders import build_encoder, resolve_specs

    data = write_video(tmp_path / "a.mp4", 30, faststart=True).read_bytes()
    (tmp_path / "b.mp4").write_bytes(data[: len(data) // 2])
    cat = Catalogue(tmp_path, [ItemRecord("a", "t", video="a.mp4"), ItemRecord("b", "t", video="b.mp4")])
    cfg = Config()
    cfg.encoders.preset = "tiny"
    enc = build_encoder("video", resolve_specs(cfg, ["video"])["video"])
    loaded = enc.load_media(list(cat), cat, "missing")
    assert loaded.present == [True, False]
    assert loaded.corrupt[0] is None and "not a readable video" in str(loaded.corrupt[1])


def test_a_cut_wav_is_corrupt_not_zero_padded(tmp_path: Path) -> None:
    """libsndfile reads a cut wav to its end without an error; load_audio zero-padded the missing half."""
    whole = write_wav(tmp_path / "whole.wav", 440.0, 16000, 1.0)
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    assert sf.info(str(cut)).frames < 16000  # what the reader would have used silently
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.wav: the file is cut short: its header declares "
                                         r"32,000 bytes of audio, it holds 15,978"):
        load_audio(cut, 16000, 1.0, "c")
    assert load_audio(whole, 16000, 1.0, "w").shape == (16000,)


def test_a_streamed_wav_without_a_declared_length_still_reads(tmp_path: Path) -> None:
    """A data chunk size of 0xFFFFFFFF (written before the length was known) declares nothing to check."""
    whole = write_wav(tmp_path / "whole.wav", 440.0, 16000, 0.5)
    raw = bytearray(whole.read_bytes())
    at = raw.index(b"data")
    raw[at + 4 : at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(raw))
    np.testing.assert_array_equal(load_audio(streamed, 16000, 0.5, "s"), load_audio(whole, 16000, 0.5, "w"))


@pytest.mark.parametrize("suffix", [".wav", ".m4a"])  # soundfile, and PyAV
def test_long_audio_is_decoded_only_as_far_as_it_is_kept(tmp_path: Path, suffix: str) -> None:
    """The whole track used to be read (a 10-minute 48 kHz stereo wav: +331 MiB) to keep its first seconds;
    the kept waveform is the same as resampling the first seconds of the whole track."""
    rate, seconds = 48000, 1.0
    wave = sine(330.0, rate, 20.0, 0.3)
    path = tmp_path / f"long{suffix}"
    if suffix == ".wav":
        sf.write(str(path), wave, rate)
    else:
        import av

        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("aac", rate=rate)
            frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    full, _ = read_audio(path, "x")
    part, got_rate = read_audio(path, "x", seconds)
    assert got_rate == rate and len(full) >= 20 * rate - 2048
    need = math.ceil(seconds * rate) + 64
    assert need <= len(part) < need + 4096  # PyAV stops at the frame that reaches it (AAC: 1,024 samples)
    np.testing.assert_array_equal(part[:need], full[:need])
    expected = resample(full[:need], rate, 16000)[:16000]
    np.testing.assert_array_equal(load_audio(path, 16000, seconds, "x"), expected)


def test_a_path_the_file_system_cannot_look_up_is_a_media_error(tmp_path: Path) -> None:
    """``Path.is_file`` raises OSError (ENAMETOOLONG) for a 300-character name: one bad cell stopped a cache
    build even with ``on_corrupt=missing``."""
    long = tmp_path / ("x" * 300 + ".png")
    with pytest.raises(MediaError, match=r"item 'i'.*cannot be looked up \(OSError"):
        load_image(long, "i")
    cat = Catalogue(tmp_path, [ItemRecord("i", "t", image="x" * 300 + ".png")])
    from crossan.config import Config
    from crossan.encoders import build_encoder, resolve_specs

    cfg = Config()
    cfg.encoders.preset = "tiny"
    enc = build_encoder("image", resolve_specs(cfg, ["image"])["image"])
    loaded = enc.load_media(list(cat), cat, "missing")
    assert loaded.present == [False] and "cannot be looked up" in str(loaded.corrupt[0])


def test_a_16_bit_pgm_keeps_its_top_8_bits_like_a_16_bit_png(tmp_path: Path) -> None:
    """Pillow opens a 16-bit PGM in mode I; it was stretched over its own range ([40000, 41000] → [0, 255],
    a flat image → black) while the same PNG gave [156, 160]."""
    from PIL import Image

    values = np.array([[40000, 41000], [40000, 40000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    (tmp_path / "g.pgm").write_bytes(b"P5 2 2 65535\n" + values.astype(">u2").tobytes())
    png = np.asarray(load_image(tmp_path / "g.png", "p"))[..., 0]
    pgm = np.asarray(load_image(tmp_path / "g.pgm", "g"))[..., 0]
    np.testing.assert_array_equal(png, values >> 8)
    np.testing.assert_array_equal(pgm, png)
