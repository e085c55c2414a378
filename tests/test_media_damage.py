"""Damaged and awkward media files (the third audit, 2026-12-01): a cut mp4, wav, w64, caf or MPEG-TS is
corrupt, not a shorter clip; long audio is decoded only as far as it is kept; a path the file system cannot
look up is a MediaError naming the item; 16-bit PGM images are reduced to 8 bits as 16-bit PNGs are;
transparent pixels become white."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.media import MediaError, load_audio, load_image, load_video, read_audio, resample
from media_helpers import frame_gray, frame_index, sine, write_video, write_wav


@pytest.mark.parametrize("kept", [0.3, 0.6, 0.9])
def test_a_cut_faststart_mp4_is_corrupt_not_a_shorter_clip(tmp_path: Path, kept: float) -> None:
    """Frame threading ended a cut stream without an error, and the clip was sampled again from the frames
    before the cut (at 60%: frames [1, 5, 8, 12] of 30 instead of [3, 11, 18, 26]), reported present."""
    whole = write_video(tmp_path / "whole.mp4", 30, faststart=True)
    assert [frame_index(f) for f in load_video(whole, 4, "uniform", "w")] == [3, 11, 18, 26]
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.mp4.*(not a readable video|the file is cut short)"):
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
    assert loaded.corrupt[0] is None
    assert "the file is cut short: its index lists 30 video frames" in str(loaded.corrupt[1])


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


@pytest.mark.parametrize("name", ["x.jpg", "x.mp4", "x.wav"])
def test_an_empty_media_file_is_said_to_be_empty(tmp_path: Path, name: str) -> None:
    """A 0-byte cover, clip or track: the error says the file is empty (it read as Pillow's "cannot identify
    image file" or FFmpeg's "invalid data"), naming the item and the file."""
    path = tmp_path / name
    path.write_bytes(b"")
    load = {"x.jpg": lambda: load_image(path, "i"), "x.mp4": lambda: load_video(path, 2, item_id="i"),
            "x.wav": lambda: load_audio(path, 16000, 1.0, "i")}[name]
    with pytest.raises(MediaError, match=rf"item 'i'.*{name}.*empty file \(0 bytes\)"):
        load()


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


# ------------------------------------------------------------------ the fourth audit (2026-12-03)
def _write_clip(path: Path, num_frames: int, codec: str = "libx264", rotation: int = 0,
                audio: bool = False) -> Path:
    """A 64×48 clip whose frame i is gray level :func:`frame_gray` (i) with a white 8×8 block in its top-left
    corner; ``rotation``: a display rotation (counter-clockwise degrees, as ``VideoFrame.rotation`` reads it);
    ``audio``: an AAC track interleaved with the frames. Its index is written before the frames (faststart)."""
    import av

    opts = {"movflags": "faststart"} if path.suffix == ".mp4" else None
    with av.open(str(path), mode="w", options=opts) as container:
        video = container.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {"qscale": "1"}
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            img = np.full((48, 64, 3), frame_gray(i), dtype=np.uint8)
            img[:8, :8] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
            if sound is not None:
                chunk = sine(440.0, 16000, 0.1)[None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, i * 1600
                for packet in sound.encode(frame):
                    container.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode() if stream is not None else []:
                container.mux(packet)
    return path


def test_an_mp4_cut_between_packets_is_corrupt_not_a_shorter_clip(tmp_path: Path) -> None:
    """A download of an mp4 with interleaved audio that stops after a whole packet ends the stream without
    an error, threaded or not: 16 of 30 frames decoded and the clip was sampled from them, reported present.
    The sample table read on opening lists all 30."""
    import av

    whole = _write_clip(tmp_path / "whole.mp4", 30, audio=True)
    assert [frame_index(f[8:, 8:]) for f in load_video(whole, 4, "uniform", "w")] == [3, 11, 18, 26]
    with av.open(str(whole)) as container:
        entry = container.streams.video[0].index_entries[15]
        end = entry.pos + entry.size  # the end of frame 15: the file holds whole packets up to it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:end])
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.mp4: the file is cut short: its index lists 30 "
                                         r"video frames, the file holds only 16 of them"):
        load_video(cut, 4, "uniform", "c")


def test_a_clip_whose_header_understates_its_length_is_sampled_over_all_of_it(tmp_path: Path) -> None:
    """An avi whose avih/strh frame count says 8 of its 30 frames: the uniform frames were taken from the
    first 8 ([1, 3, 5, 7]). The packets past the declared count are now seen and the clip recounted."""
    whole = _write_clip(tmp_path / "whole.avi", 30, codec="mpeg4")
    raw = bytearray(whole.read_bytes())
    avih, strh = raw.index(b"avih"), raw.index(b"strh")
    for at in (avih + 8 + 16, strh + 8 + 32):  # avih.dwTotalFrames, strh.dwLength
        assert int.from_bytes(raw[at : at + 4], "little") == 30
        raw[at : at + 4] = (8).to_bytes(4, "little")
    short = tmp_path / "short.avi"
    short.write_bytes(bytes(raw))
    for sampling, expected in (("uniform", [3, 11, 18, 26]), ("middle", [13, 14, 15, 16])):
        assert [frame_index(f[8:, 8:]) for f in load_video(whole, 4, sampling, "w")] == expected
        assert [frame_index(f[8:, 8:]) for f in load_video(short, 4, sampling, "s")] == expected


def test_a_rotated_clip_is_turned_upright(tmp_path: Path) -> None:
    """A portrait phone clip is stored landscape with a display matrix turning it 90° clockwise (rotation
    -90); its frames were used as stored, on their side. The white block of the stored top-left corner
    now shows top-right, as a player shows it."""
    plain = load_video(_write_clip(tmp_path / "plain.mp4", 3), 3, "uniform", "p")
    turned = load_video(_write_clip(tmp_path / "turned.mp4", 3, rotation=-90), 3, "uniform", "t")
    assert plain[0].shape == (48, 64, 3) and turned[0].shape == (64, 48, 3)
    for stored, upright in zip(plain, turned):
        np.testing.assert_array_equal(upright, np.rot90(stored, -1))
        assert upright[:8, -8:].min() > 240 and upright[:8, :8].max() < 100
    assert [frame_index(f[8:, :-8]) for f in turned] == [0, 1, 2]


def _write_mp3(path: Path, wave: np.ndarray, rate: int, xing: bool = True, vbr: bool = False) -> Path:
    import av

    with av.open(str(path), mode="w", format="mp3", options={"write_xing": "1" if xing else "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        if vbr:
            stream.codec_context.qscale = 2
            stream.codec_context.flags |= av.codec.context.Flags.qscale
        for at in range(0, len(wave), 1152):
            frame = av.AudioFrame.from_ndarray(wave[None, at : at + 1152], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, at
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_cut_mp3_is_corrupt_not_zero_padded(tmp_path: Path) -> None:
    """Only a cut wav was refused: an mp3 cut at half decoded to 2 s and was zero-padded to 4. Its Xing/Info
    header declares 4 s; the first second, which is all there, still reads."""
    whole = _write_mp3(tmp_path / "whole.mp3", sine(440.0, 44100, 4.0), 44100)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    assert load_audio(whole, 16000, 4.0, "w").shape == (64000,)
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.mp3: the file is cut short: its header declares "
                                         r"4\.00 s of audio, it decodes to [12]\.\d\d s"):
        load_audio(cut, 16000, 4.0, "c")
    np.testing.assert_array_equal(load_audio(cut, 16000, 1.0, "c"), load_audio(whole, 16000, 1.0, "w"))


def test_a_vbr_mp3_without_a_length_header_still_reads(tmp_path: Path) -> None:
    """Without a Xing header FFmpeg estimates the duration from the first frame's bit rate: silence then
    noise, VBR, declares ~14 s and decodes to 5 s. That estimate is not a declared length to check."""
    import av

    noise = np.random.default_rng(0).uniform(-0.8, 0.8, 3 * 44100).astype(np.float32)
    wave = np.concatenate([np.zeros(2 * 44100, np.float32), noise])
    path = _write_mp3(tmp_path / "vbr.mp3", wave, 44100, xing=False, vbr=True)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert float(stream.duration * stream.time_base) > 10.0
    got, rate = read_audio(path, "v")
    assert rate == 44100 and abs(len(got) / rate - 5.0) < 0.1


def _cut_ogg(tmp_path: Path) -> tuple[Path, bytes]:
    whole = tmp_path / "whole.ogg"
    sf.write(str(whole), sine(440.0, 16000, 20.0), 16000, format="OGG", subtype="VORBIS")
    assert load_audio(whole, 16000, 20.0, "w").shape == (320000,)
    return whole, whole.read_bytes()


def test_a_cut_ogg_is_corrupt_not_empty_or_shorter(tmp_path: Path) -> None:
    """Cut at 30% libsndfile read a Vorbis file as 0 samples without an error ("the audio holds no samples",
    PyAV never tried); cut at 50% both readers read 5 s of the 20 without an error, zero-padded to 20. A
    complete Ogg stream ends with a whole page flagged end-of-stream."""
    _, data = _cut_ogg(tmp_path)
    cut = tmp_path / "cut.ogg"
    for kept in (0.3, 0.5):
        cut.write_bytes(data[: int(len(data) * kept)])
        with pytest.raises(MediaError, match=r"item 'c'.*cut\.ogg: the file is cut short: its last Ogg page is "
                                             r"incomplete"):
            load_audio(cut, 16000, 20.0, "c")
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)]
    cut.write_bytes(data[: pages[len(pages) // 2]])  # cut between two pages: every page in it is whole
    assert 0 < sf.info(str(cut)).frames < 320000  # what the readers would have used silently
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.ogg: the file is cut short: its last Ogg page does "
                                         r"not end the stream"):
        load_audio(cut, 16000, 20.0, "c")


def test_a_reader_that_finds_no_samples_hands_over_to_the_next(tmp_path: Path, monkeypatch) -> None:
    """With the page check out of the way, the cut ogg that libsndfile reads as empty is tried with PyAV too,
    and the message says what each reader found."""
    from crossan.data import media

    monkeypatch.setattr(media, "_ogg_shortfall", lambda path: None, raising=False)
    _, data = _cut_ogg(tmp_path)
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    assert sf.read(str(cut))[0].shape[0] == 0  # the first reader, silently
    with pytest.raises(MediaError, match=r"item 'c'.*cut\.ogg: no audio could be decoded, a cut or corrupt "
                                         r"file \(soundfile: no samples; PyAV: EOFError"):
        load_audio(cut, 16000, 20.0, "c")


# ------------------------------------------------------------------ the fifth audit (2026-12-03, media)
def test_transparent_pixels_become_white_whatever_colour_they_store(tmp_path: Path) -> None:
    """Pillow's conversion to RGB drops the alpha channel and keeps the colour stored under transparent pixels,
    which is arbitrary: two PNGs that show the same red square on a transparent background gave a black and
    a green background. Transparency (alpha, a palette entry, a colour key) is now composited onto white, as
    transformers' ``convert_to_rgb`` does; a half-transparent pixel is blended, an opaque one kept."""
    from PIL import Image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[1:3, 1:3] = (200, 30, 30, 255)
    rgba[0, 3] = (200, 30, 30, 128)
    hidden_green = rgba.copy()
    hidden_green[rgba[..., 3] == 0] = (0, 255, 0, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "black.png")
    Image.fromarray(hidden_green, "RGBA").save(tmp_path / "green.png")
    Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "grey.png")  # L = 200, alpha as above
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 30, 30])
    palette.paste(1, (1, 1, 3, 3))
    palette.save(tmp_path / "palette.gif", transparency=0)
    key = Image.new("RGB", (4, 4), (0, 0, 0))
    key.paste((200, 30, 30), (1, 1, 3, 3))
    key.save(tmp_path / "key.png", transparency=(0, 0, 0))

    expected = np.full((4, 4, 3), 255, dtype=np.uint8)
    expected[1:3, 1:3] = (200, 30, 30)
    for name in ("black.png", "green.png"):
        got = np.asarray(load_image(tmp_path / name, "i"))
        np.testing.assert_array_equal(got[0, 3], (227, 142, 142))  # 200·a + 255·(1 − a), a = 128/255
        got = got.copy()
        got[0, 3] = 255
        np.testing.assert_array_equal(got, expected)
    for name in ("palette.gif", "key.png"):
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / name, "i")), expected)
    grey = np.asarray(load_image(tmp_path / "grey.png", "i"))
    assert grey[0, 0].tolist() == [255] * 3 and grey[1, 1].tolist() == [200] * 3
    assert grey[0, 3].tolist() == [227] * 3


@pytest.mark.parametrize(("codec", "pix_fmt", "suffix"), [("ffv1", "bgra", ".mkv"), ("qtrle", "argb", ".mov"),
                                                          ("png", "rgba", ".mov")])
def test_transparent_video_frames_become_white_as_images_do(tmp_path: Path, codec: str, pix_fmt: str,
                                                            suffix: str) -> None:
    """FFmpeg's conversion of a frame to rgb24 drops its alpha and keeps the colour stored under transparent
    pixels: a clip of a red square on a transparent background stored over green gave green frames (images
    were composited onto white since crossan 0.1.6, frames were not). Frames with an alpha channel are now
    composited onto white as images are, a half-transparent pixel blended."""
    import av

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 1] = 255  # green under every transparent pixel
    rgba[4:12, 4:12] = (200, 30, 30, 255)
    rgba[0, 15] = (200, 30, 30, 128)
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, pix_fmt
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as clip:  # what the old conversion read
        assert next(clip.decode(video=0)).to_ndarray(format="rgb24")[0, 0].tolist() == [0, 255, 0]

    expected = np.full((16, 16, 3), 255, dtype=np.uint8)
    expected[4:12, 4:12] = (200, 30, 30)
    frames = load_video(path, 2, item_id="v")
    assert len(frames) == 2
    for got in frames:
        np.testing.assert_array_equal(got[0, 15], (227, 142, 142))  # 200·a + 255·(1 − a), a = 128/255
        got = got.copy()
        got[0, 15] = 255
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("suffix", [".mov", ".avi"])
def test_transparent_palette_video_frames_become_white_as_images_do(tmp_path: Path, suffix: str) -> None:
    """A palette PNG with a tRNS chunk, muxed into a MOV or AVI, decodes to ``pal8`` frames whose palette
    carries the alpha; PyAV marks no component of ``pal8`` as alpha, so the frames were converted to rgb24
    and kept the green stored under the transparent entry. They are now composited onto white, to the
    pixels :func:`load_image` gives for the same PNG."""
    import io
    from fractions import Fraction

    import av
    from PIL import Image

    index = np.zeros((16, 16), dtype=np.uint8)  # entry 0: green, fully transparent
    index[4:12, 4:12] = 1  # entry 1: opaque red
    index[0, 15] = 2  # entry 2: the same red, half transparent
    im = Image.fromarray(index, "P")
    im.putpalette([0, 255, 0, 200, 30, 30, 200, 30, 30])
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=b"\x00\xff\x80")
    (tmp_path / "still.png").write_bytes(buf.getvalue())
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "pal8"
        for i in range(4):
            packet = av.Packet(buf.getvalue())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 4)
            out.mux(packet)
    with av.open(str(path)) as clip:  # what the old conversion read
        frame = next(clip.decode(video=0))
        assert frame.format.name == "pal8" and frame.to_ndarray(format="rgb24")[0, 0].tolist() == [0, 255, 0]

    expected = np.full((16, 16, 3), 255, dtype=np.uint8)
    expected[4:12, 4:12] = (200, 30, 30)
    expected[0, 15] = (227, 142, 142)  # 200·a + 255·(1 − a), a = 128/255
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "still.png")), expected)
    frames = load_video(path, 2, item_id="v")
    assert len(frames) == 2
    for got in frames:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("fmt", "suffix", "declared", "held"), [("AIFF", ".aiff", "32,008", "15,981"),
                                                                  ("AU", ".au", "32,000", "15,988")])
def test_a_cut_aiff_or_au_is_corrupt_not_zero_padded(tmp_path: Path, fmt: str, suffix: str, declared: str,
                                                     held: str) -> None:
    """Only a cut wav was refused: libsndfile reads an AIFF or AU file cut at half to its end without an error
    (its length clamped to what the file holds) and load_audio zero-padded the missing half. Their headers
    declare the bytes of audio (AIFF's SSND chunk, AU's data size), as a wav's data chunk does."""
    whole = tmp_path / f"whole{suffix}"
    sf.write(str(whole), sine(440.0, 16000, 1.0), 16000, format=fmt, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert 0 < sf.info(str(cut)).frames < 16000  # what the reader would have used silently
    with pytest.raises(MediaError, match=rf"cut{suffix}: the file is cut short: its header declares {declared} "
                                         rf"bytes of audio, it holds {held}"):
        load_audio(cut, 16000, 1.0, "c")
    np.testing.assert_allclose(load_audio(whole, 16000, 1.0, "w"), sine(440.0, 16000, 1.0), atol=1e-4)


def test_a_flac_cut_between_two_frames_is_corrupt_not_zero_padded(tmp_path: Path) -> None:
    """A flac cut inside a frame fails to decode, but one cut between two frames (at a frame's sync code) made
    libsndfile fail and PyAV decode it to the cut without an error: 2.05 s of a 4 s track, zero-padded. Its
    STREAMINFO declares the length, checked as an mp3's Xing header is."""
    whole = tmp_path / "whole.flac"
    sf.write(str(whole), sine(440.0, 16000, 4.0), 16000, format="FLAC", subtype="PCM_16")
    data = whole.read_bytes()
    frames = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xf8"]  # fixed-blocksize frame syncs
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: frames[len(frames) // 2]])
    with pytest.raises(MediaError, match=r"cut\.flac: the file is cut short: its header declares 4\.00 s of "
                                         r"audio, it decodes to 2\.05 s"):
        load_audio(cut, 16000, 4.0, "c")
    assert load_audio(whole, 16000, 4.0, "w").shape == (64000,)


def test_a_cut_mkv_is_corrupt_not_a_shorter_clip(tmp_path: Path) -> None:
    """A Matroska/WebM clip has no frame count and its index follows the frames: one cut at half decoded to
    its first 10 frames without an error and was sampled as a whole clip (frames 1, 3, 6, 8 of 30). The length
    its header states (the track's DURATION tag) is now checked, with the tolerance of a cut audio track."""
    whole = tmp_path / "whole.mkv"
    _write_clip(whole, 30)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"cut\.mkv: the file is cut short: its header declares 3\.00 s of video, "
                                         r"it decodes to \d\.\d\d s"):
        load_video(cut, 4, "uniform", "c")
    assert [frame_index(f[8:, 8:]) for f in load_video(whole, 4, "uniform", "w")] == [3, 11, 18, 26]


@pytest.mark.parametrize(("fmt", "subtype", "suffix", "message"), [
    ("W64", "PCM_16", ".w64", r"its header declares 32,000 bytes of audio, it holds 15,948"),
    ("CAF", "PCM_16", ".caf", r"its header declares 32,000 bytes of audio, it holds 13,952"),
    ("CAF", "ALAC_16", ".caf", r"its header declares 8,486 bytes of audio, it holds 4,169"),
])
def test_a_cut_w64_or_caf_is_corrupt_not_zero_padded(tmp_path: Path, fmt: str, subtype: str, suffix: str,
                                                     message: str) -> None:
    """A Sony Wave64 or PCM CAF file cut at half was read to the cut without an error (libsndfile for the
    w64, FFmpeg for the caf, which libsndfile refuses) and zero-padded. Both state their audio's size (w64:
    64-bit chunk sizes, caf: its ``data`` chunk), now checked as a wav's is; intact ones read as before. (A cut
    ALAC caf was refused already, through FFmpeg's reading of its packet table; it is now named the same way.)"""
    whole = tmp_path / f"whole{suffix}"
    sf.write(str(whole), sine(440.0, 16000, 1.0), 16000, format=fmt, subtype=subtype)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=rf"item 'c'.*cut{suffix}: the file is cut short: {message}"):
        load_audio(cut, 16000, 1.0, "c")
    np.testing.assert_allclose(load_audio(whole, 16000, 1.0, "w"), sine(440.0, 16000, 1.0), atol=1e-4)


def test_a_caf_cut_in_its_packet_table_is_named_so_and_a_streamed_pcm_caf_still_reads(tmp_path: Path) -> None:
    """An ALAC caf cut inside its packet table (``pakt``) is named as such (it was 'not a readable audio
    file'); a PCM caf written as a stream (its ``data`` size -1: no length stated) still reads, to the same
    samples (a cut one is not detected: nothing states its length)."""
    alac, pcm = tmp_path / "alac.caf", tmp_path / "pcm.caf"
    sf.write(str(alac), sine(440.0, 16000, 1.0), 16000, format="CAF", subtype="ALAC_16")
    sf.write(str(pcm), sine(440.0, 16000, 1.0), 16000, format="CAF", subtype="PCM_16")
    data = alac.read_bytes()
    cut = tmp_path / "cut.caf"
    cut.write_bytes(data[: data.index(b"pakt") + 20])
    with pytest.raises(MediaError, match=r"cut\.caf: the file is cut short: its packet table declares 32 bytes, "
                                         r"it holds 8"):
        load_audio(cut, 16000, 1.0, "c")
    data = pcm.read_bytes()
    at = data.index(b"data")
    streamed = tmp_path / "streamed.caf"
    streamed.write_bytes(data[: at + 4] + (-1).to_bytes(8, "big", signed=True) + data[at + 12 :])
    np.testing.assert_array_equal(load_audio(streamed, 16000, 1.0, "s"), load_audio(pcm, 16000, 1.0, "p"))


@pytest.mark.parametrize("m2ts", [False, True])
def test_an_mpeg_ts_cut_inside_a_packet_is_corrupt_not_a_shorter_clip(tmp_path: Path, m2ts: bool) -> None:
    """An MPEG transport stream states no length: one cut at 47% decoded to the frames before the cut without
    an error and was sampled as a whole clip (frames 1, 5, 8, 12 of 30). A transport stream is a run of 188-byte
    packets (192 in an M2TS), so a file that ends inside one is cut; one cut exactly between two packets is
    not detectable and still reads as a shorter clip. Its audio track (read_audio of a .ts) is checked too."""
    import av

    suffix, packet = (".m2ts", 192) if m2ts else (".ts", 188)
    whole = tmp_path / f"whole{suffix}"
    with av.open(str(whole), mode="w", format="mpegts", options={"mpegts_m2ts_mode": "1" if m2ts else "0"}) as c:
        video = c.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.options = {"qp": "0", "preset": "ultrafast"}
        sound = c.add_stream("aac", rate=16000)
        for i in range(30):
            for p in video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), frame_gray(i), np.uint8),
                                                            format="rgb24")):
                c.mux(p)
            chunk = av.AudioFrame.from_ndarray(sine(440.0, 16000, 0.1)[None, :], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, 1600 * i
            for p in sound.encode(chunk):
                c.mux(p)
        for stream in (video, sound):
            for p in stream.encode():
                c.mux(p)
    data = whole.read_bytes()
    assert len(data) % packet == 0
    assert [frame_index(f) for f in load_video(whole, 4, "uniform", "w")] == [3, 11, 18, 26]
    assert read_audio(whole, "w")[1] == 16000
    end = int(len(data) * 0.47)
    end += 0 if end % packet else 1  # inside a packet
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[:end])
    with pytest.raises(MediaError, match=rf"item 'c'.*cut{suffix}: the file is cut short: it ends {end % packet} "
                                         rf"bytes into a {packet}-byte MPEG-TS packet"):
        load_video(cut, 4, "uniform", "c")
    with pytest.raises(MediaError, match=rf"cut{suffix}: the file is cut short: it ends"):
        read_audio(cut, "c")
    cut.write_bytes(data[: end - end % packet])  # between two packets: the documented limit
    assert len(load_video(cut, 4, "uniform", "c")) == 4


def _png(width: int, height: int, depth: int, colour: int, interlace: int, rows: int | None = None) -> bytes:
    """A PNG written by hand (Pillow writes no interlaced ones) holding the first ``rows`` rows (of all passes
    in turn; None: all) of the image data its header needs, as one complete zlib stream split over several
    IDAT chunks; filter 0, random bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
              if interlace else [(0, 0, 1, 1)])
    rng = np.random.default_rng(width * 1000 + height)
    lines = []
    for x0, y0, dx, dy in passes:
        h, w = -(-(height - y0) // dy), -(-(width - x0) // dx)
        for _ in range(max(h, 0) if w > 0 else 0):
            lines.append(b"\x00" + rng.integers(0, 256, (w * bits + 7) // 8, dtype=np.uint8).tobytes())
    packed = zlib.compress(b"".join(lines[:rows]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
            + (chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b"")
            + b"".join(chunk(b"IDAT", packed[i:i + 40]) for i in range(0, len(packed), 40)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("depth", "colour", "interlace"),
                         [(8, 2, 0), (8, 6, 0), (1, 0, 0), (4, 3, 0), (8, 2, 1), (2, 0, 1), (16, 4, 1)])
def test_a_png_whose_image_data_ends_early_is_corrupt_not_black_rows(tmp_path: Path, depth: int, colour: int,
                                                                     interlace: int) -> None:
    # Pillow decodes such a file (a writer that stopped after whole rows) without an error, the rest black
    whole, short = tmp_path / "whole.png", tmp_path / "short.png"
    whole.write_bytes(_png(19, 11, depth, colour, interlace))
    short.write_bytes(_png(19, 11, depth, colour, interlace, rows=7))
    assert load_image(whole, "w").size == (19, 11)
    with pytest.raises(MediaError, match=r"item 's'.*short\.png: the image data ends early"):
        load_image(short, "s")


def test_a_clip_without_video_says_what_it_holds(tmp_path: Path) -> None:
    """A damaged mp4 index (its track box overwritten) read as a bare "no video stream", as an audio-only file
    did: the message now tells the two apart."""
    import av

    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(write_video(tmp_path / "v.mp4", 8).read_bytes().replace(b"trak", b"free"))
    with pytest.raises(MediaError, match=r"item 'd'.*damaged\.mp4.*holds no stream at all \(an empty or damaged"):
        load_video(damaged, 4, "uniform", "d")
    sound = tmp_path / "sound.mp4"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), dtype=np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(MediaError, match=r"item 's'.*sound\.mp4.*no video stream: the file holds only audio streams"):
        load_video(sound, 4, "uniform", "s")


_OOM_PROBE = """
import gc, resource, sys
from PIL import Image
from crossan.config import Config
from crossan.data.catalogue import Catalogue, ItemRecord
from crossan.data.media import MediaError, MediaMemoryError
from crossan.encoders import build_encoder, resolve_specs

Image.new("RGB", (9000, 9000), (200, 10, 10)).save(sys.argv[1] + "/big.png")  # 243 MB decoded, 0.3 MB on disk
Image.new("RGB", (32, 32), (0, 10, 10)).save(sys.argv[1] + "/small.png")
gc.collect()
cfg = Config()
cfg.encoders.preset = "tiny"
enc = build_encoder("image", resolve_specs(cfg, ["image"])["image"])
cat = Catalogue(sys.argv[1], [ItemRecord("s", "t", image="small.png"), ItemRecord("b", "t", image="big.png")])
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (120 << 20), resource.RLIM_INFINITY))
try:
    loaded = enc.load_media(list(cat), cat, "missing")
    print("loaded", loaded.present, loaded.corrupt)
except MediaMemoryError as e:
    print("stopped:", e, isinstance(e, MediaError))
"""


@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_running_out_of_memory_on_a_sound_file_is_no_corrupt_file(tmp_path: Path) -> None:
    """A second reader (2026-12-04) cached a sound 8192² clip and a 13,000² PNG under `ulimit -v`: the
    MemoryError became "not a readable video/image", and with `cache.on_corrupt=missing` the item was recorded
    corrupt, so every later build (with memory enough) skipped it as "up to date". Running out of memory now
    stops the build naming the item and file; the item is not marked anything."""
    import subprocess
    import sys

    (tmp_path / "probe.py").write_text(_OOM_PROBE)
    out = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"stopped: item 'b': out of memory while decoding {tmp_path / 'big.png'}"), out.stdout
    assert "the file is not taken for corrupt" in out.stdout and out.stdout.rstrip().endswith("False")


def test_many_channels_are_mixed_down_a_block_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """A second reader (2026-12-04): a 52 KB Ogg of 255 silent channels took 1.5 GB to read 30 s, libsndfile's
    whole read being seconds × rate × channels floats before the mix-down. Blocks are mixed as they are read
    now: the same samples, memory of one block beside the mono track."""
    import tracemalloc

    import crossan.data.media as media

    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, (16000 * 8, 64)).astype(np.float32)  # 8 s of 64 channels: 32 MiB as floats
    path = tmp_path / "many.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    whole = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)
    monkeypatch.setattr(media, "SOUNDFILE_BLOCK_BYTES", 1000 * 64 * 4, raising=False)  # 1,000 frames: no divisor
    got, rate = media._read_soundfile(path, 5.0)
    assert rate == 16000 and np.array_equal(got, whole[: 16000 * 5 + 64])  # 64: the resampling margin
    got, _ = media._read_soundfile(path, None)
    assert np.array_equal(got, whole)
    monkeypatch.undo()
    tracemalloc.start()
    media._read_soundfile(path, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 12 << 20  # one block of 8 MiB and the mono track (0.5 MiB); 32 MiB read whole


def test_running_out_of_memory_in_any_decoder_is_no_corrupt_file(tmp_path: Path, monkeypatch) -> None:
    """Mutation testing (2026-12-04): the video and audio readers' `except MemoryError` could be removed without
    a test failing (only the image reader's was run out of memory for real)."""
    import crossan.data.media as media

    clip, track = write_video(tmp_path / "a.mp4", 8), write_wav(tmp_path / "a.wav", 440.0, 16000, 1.0)

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(media, "_decode_frames", exhausted)
    with pytest.raises(media.MediaMemoryError, match=f"item 'v': out of memory while decoding {clip}"):
        load_video(clip, 4, "uniform", "v")
    monkeypatch.setattr(media, "_read_soundfile", exhausted)
    monkeypatch.setattr(media, "_read_pyav", lambda *a, **k: pytest.fail("a reader after an exhausted one ran"))
    with pytest.raises(media.MediaMemoryError, match=f"item 'a': out of memory while decoding {track}"):
        load_audio(track, 16000, 1.0, "a")
    assert not issubclass(media.MediaMemoryError, MediaError)
