"""Reading raw item media: text, images, video frames and audio waveforms.

Every loader takes a path (absolute, or relative to the working directory) and the id of the item it
belongs to; a file that is missing, corrupt or otherwise unreadable raises :class:`MediaError`, whose
message names both the item and the path. Whether an item *has* a modality at all is the catalogue's
business (:meth:`ItemRecord.has`); these functions are only called for files that should exist.

* text — :func:`load_text`: the title as a string (``None`` when empty); tokenisation is the encoder's job.
* images — :func:`load_image`: anything Pillow opens, as an RGB ``PIL.Image`` (8 bits per channel).
  Greyscale images of more than 8 bits are brought to 8 bits first (Pillow's own conversion would clip
  them): 16-bit ones (modes ``I;16*``, and ``I`` read from a PNG or a PGM/PPM, which hold at most 16 bits)
  keep their top 8 bits (``v >> 8``); 32-bit integer (``I``) and float (``F``) ones are mapped linearly
  from their own range ``[min, max]`` to ``[0, 255]`` (a constant image becomes black), and refused when
  they hold NaN or infinite values. An image with transparency (an alpha channel, or a palette entry or colour
  key marked transparent: PNG, GIF, WebP …) is composited onto white, as transformers' ``convert_to_rgb`` does
  and as a web page shows it: the colour stored under a transparent pixel is arbitrary (black, or whatever the
  writer left there), and Pillow's plain conversion to RGB would keep it. The EXIF orientation tag is not
  applied (as IISAN's ``Image.open(...).convert("RGB")``): pixels are used as stored. A PNG whose image data
  ends early (fewer rows than its header states, which Pillow reads as black rows without an error when the
  data stops after a whole row) is corrupt (:func:`_png_shortfall`).
* video — :func:`load_video`: anything PyAV decodes; ``num_frames`` RGB frames (``uint8 [H, W, 3]``) chosen by
  :func:`sample_frame_indices` (``uniform``: the centres of ``num_frames`` equal segments of the clip;
  ``middle``: ``num_frames`` consecutive frames centred on the clip's middle frame). A clip shorter than
  ``num_frames`` repeats frames. A clip whose container index (an mp4's sample table, an avi's idx1) lists
  frames past the end of the file is corrupt (a cut download: FFmpeg just ends the stream there); so is a
  Matroska/WebM clip (no frame count, its index after the frames) that decodes to less than the length its
  header states (:func:`_matroska_shortfall`); so is an MPEG transport stream (ts/mts/m2ts, known by its sync
  bytes) that ends inside a packet (:func:`_mpegts_shortfall`; one cut exactly between two packets states no
  length to fall short of, and is read as a shorter clip). A clip that decodes to fewer frames than its
  metadata says is decoded again without frame threading (which ends a cut stream quietly): a decoding error
  there makes it corrupt, a clean end means the metadata overstated the length and the frames are sampled
  again; so is a clip that holds more packets than its metadata's frame count (an understating header), found
  by demuxing, not decoding, the rest of the stream after the last wanted frame. Frames are turned upright by
  the stream's display rotation (PyAV's ``frame.rotation``, in quarter turns; a portrait phone clip is stored
  landscape with a 90° rotation), as a player shows them; a mirroring in the display matrix is not applied.
  (Images, by contrast, keep their stored orientation: see above.) Frames with transparency (an alpha
  channel: FFV1, QuickTime Animation, PNG-in-MOV, ProRes 4444, an animated GIF …; or a palette with
  transparent entries: a palette PNG in a MOV or AVI) are composited onto white, as images are. The alpha of
  a VP8/VP9 WebM (stored beside the picture, ``alpha_mode=1``) is not read: FFmpeg's own VP8/VP9 decoders
  ignore it, so such frames keep the colour stored under transparent pixels. (FFmpeg's libvpx decoder reads
  it, but on the same lossless file it returned a 2×2 block of wrong alpha in a few of several hundred
  decodes here: not repeatable, so a cache built from it would not be either.)
* audio — :func:`load_audio`: wav/flac/ogg through soundfile, everything else (mp3, m4a, the audio
  track of an mp4 …) through PyAV; mixed to mono float32, resampled with :func:`resample` and cut or
  zero-padded to a fixed duration. Only the kept duration is decoded (a long track costs no more memory
  than a short one). A file cut short (a cut download) is corrupt, not silently shortened and zero-padded:
  a wav, aiff, au, w64 (Sony Wave64) or caf (Apple CAF: its audio or its packet table) whose header declares
  more audio than the file holds (a caf whose audio size is -1, written as a stream, states none, and is not
  checked); an MPEG transport stream (ts/mts/m2ts) that ends inside a packet; an Ogg file (ogg/oga/opus) whose
  last page is incomplete or does not end the stream; an mp4/m4a whose index lists packets past the end of
  the file; a flac (its STREAMINFO; a cut inside a frame is a decoding error, one between two frames is
  not) or an mp3 whose Xing/Info/VBRI header declares a length that decoding to the end falls short of by
  more than :data:`AUDIO_SHORTFALL_SECONDS` and more than :data:`AUDIO_SHORTFALL_FRACTION` of it (an mp3
  without such a header is not checked: FFmpeg only estimates its length from the bit rate). A reader that
  finds no samples (libsndfile reads some cut oggs as empty, without an error) hands over to the next one.
"""

from __future__ import annotations

import errno
import math
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from crossan.errors import CrossanError

if TYPE_CHECKING:
    import av
    from PIL.Image import Image

FrameSampling = Literal["uniform", "middle"]


class MediaError(CrossanError, RuntimeError):
    """A media file of an item could not be read (missing, truncated, not a media file …)."""

    def __init__(self, item_id: str, path: str | Path, reason: str) -> None:
        self.item_id = item_id
        self.path = str(path)
        self.reason = reason
        super().__init__(f"item {item_id!r}: cannot read {path}: {reason}")


class MediaMemoryError(CrossanError, MemoryError):
    """Memory ran out while an item's media file was decoded. Not a :class:`MediaError`: the file may be
    sound (a very large image or video), so it is never counted corrupt (``cache.on_corrupt=missing`` would
    drop a good item for good); the build stops and resumes where it stopped."""

    def __init__(self, item_id: str, path: str | Path, error: BaseException) -> None:
        self.item_id, self.path = item_id, str(path)
        detail = f" ({type(error).__name__}: {error})" if str(error) else f" ({type(error).__name__})"
        super().__init__(f"item {item_id!r}: out of memory while decoding {path}{detail}; the file is not taken "
                         "for corrupt: free memory or lower encoders.batch_size, then run the command again (it "
                         "resumes)")


def special_file_kind(mode: int) -> str:
    """What a path that is no regular file is, from its ``st_mode``: ``"a folder"``, ``"a named pipe (FIFO)"`` …"""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "something other than a file")


def _check_exists(path: Path, item_id: str) -> None:
    """:class:`MediaError` when ``path`` is not a regular file, or is an empty one (no decoder would say so
    plainly: Pillow's "cannot identify image file", FFmpeg's "invalid data"). A folder, a named pipe or a
    device is refused here, before any reader opens it (opening a named pipe blocks until a writer comes)."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # what Path.is_file takes for "no file"
            raise MediaError(item_id, path, "file not found") from None
        # a name too long for the file system, a permission error on a folder …
        raise MediaError(item_id, path, f"cannot be looked up ({type(e).__name__}: {e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(item_id, path, f"not a regular file: the path is {special_file_kind(st.st_mode)}")
    if st.st_size == 0:
        raise MediaError(item_id, path, "empty file (0 bytes)")


# --------------------------------------------------------------------------------------------- text
def load_text(text: str | None) -> str | None:
    """The item's text with surrounding whitespace removed, or None when there is none."""
    if text is None:
        return None
    text = text.strip()
    return text or None


# --------------------------------------------------------------------------------------------- images
def _eight_bit(im: Image, path: Path, item_id: str) -> Image:
    """``im`` as an 8-bit greyscale image when it is a greyscale image of more bits (see the module
    docstring); any other image as it is."""
    from PIL import Image

    if im.mode.startswith("I;16") or (im.mode == "I" and im.format in ("PNG", "PPM")):
        values = np.asarray(im).astype(np.int64)
        grey = np.clip(values >> 8, 0, 255).astype(np.uint8)
        key = im.info.get("transparency")
        if isinstance(key, int):  # a PNG colour key of the 16-bit values: those pixels become alpha 0
            return Image.fromarray(np.stack([grey, np.where(values == key, 0, 255).astype(np.uint8)], -1))
        return Image.fromarray(grey)
    if im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise MediaError(item_id, path, f"the {im.mode} (32-bit) image holds NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.rint(scaled).astype(np.uint8))
    return im


def _rgb(im: Image) -> Image:
    """``im`` as RGB; an image with transparency composited onto white (see the module docstring)."""
    from PIL import Image

    if not any(band in ("A", "a") for band in im.getbands()) and im.info.get("transparency") is None:
        return im.convert("RGB")
    rgba = im.convert("RGBA")  # a palette's or a colour key's transparency becomes alpha; "a" is unpremultiplied
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_image(path: str | Path, item_id: str = "") -> Image:
    """Open an image file and return it fully decoded as RGB, 8 bits per channel (greyscale images of 16 or
    32 bits are rescaled, not clipped; transparent pixels become white: see the module docstring)."""
    from PIL import Image

    path = Path(path)
    _check_exists(path, item_id)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later inside a processor
            if im.format == "PNG" and (short := _png_shortfall(path)):
                raise MediaError(item_id, path, short)
            return _rgb(_eight_bit(im, path, item_id))
    except MediaError:
        raise
    except MemoryError as e:  # a sound but very large image: no corrupt file
        raise MediaMemoryError(item_id, path, e) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError …
        raise MediaError(item_id, path, f"not a readable image ({type(e).__name__}: {e})") from e


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_shortfall(path: Path) -> str | None:
    """Why a PNG whose image data ends early is corrupt, or None. Pillow fills the rows a PNG's compressed
    data does not hold with zeros (black) and raises nothing when that data is a complete zlib stream of too
    few rows (a writer that stopped early); here the IDAT chunks are inflated again and their length compared
    with what the header's size, colour type, bit depth and interlacing need (a filter byte per row of each
    pass). Only a file that parses as a plain PNG is checked; anything else was Pillow's to refuse."""
    import struct
    import zlib

    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _PNG_CHANNELS:
        return None
    bits = depth * _PNG_CHANNELS[colour]
    passes = _ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    rows = [(-(-(height - y0) // dy), -(-(width - x0) // dx)) for x0, y0, dx, dy in passes]
    need = sum(h * (1 + (w * bits + 7) // 8) for h, w in rows if h > 0 and w > 0)
    inflate, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            chunk = data[pos + 8:pos + 8 + size]
            try:  # counted a MiB at a time: a large image's raw rows are never held at once
                while chunk and got < need:
                    got += len(inflate.decompress(chunk, 1 << 20))
                    chunk = inflate.unconsumed_tail
            except zlib.error:
                return None  # Pillow decoded it; a stream it accepts is not ours to judge
            if got >= need:
                return None
        elif kind == b"IEND":
            break
        pos += 12 + size
    if got >= need:
        return None
    row_bytes = 1 + (width * bits + 7) // 8
    held = f"{got // row_bytes:,} of its {height:,} rows" if interlace != 1 else f"{got:,} of {need:,} bytes"
    return (f"the image data ends early: it holds {held} ({width}×{height} pixels), the rest would read "
            "as black")


# --------------------------------------------------------------------------------------------- video
def sample_frame_indices(total: int, num_frames: int, sampling: FrameSampling = "uniform") -> list[int]:
    """Which of a clip's ``total`` frames to keep.

    ``uniform``: frame ``floor((i + 0.5) · total / num_frames)`` for i < num_frames — the centre of each of
    ``num_frames`` equal segments of the frame sequence (by index, not by timestamp: where a variable-frame-rate
    clip has more frames per second, more are taken from it). ``middle``: ``num_frames`` consecutive frames centred on the middle of
    the clip (falls back to ``uniform`` when the clip is shorter). Short clips repeat frames.
    """
    if total < 1:
        raise ValueError("a clip needs at least one frame")
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    if sampling == "middle" and total >= num_frames:
        start = (total - num_frames) // 2
        return list(range(start, start + num_frames))
    if sampling not in ("uniform", "middle"):
        raise ValueError(f"unknown frame sampling {sampling!r}; expected 'uniform' or 'middle'")
    return [min(total - 1, ((2 * i + 1) * total) // (2 * num_frames)) for i in range(num_frames)]


def _no_video(container: av.container.InputContainer) -> str:
    """Why a file has no video to read: the streams it does hold, or none at all (a damaged container index
    reads so too)."""
    kinds = sorted({s.type for s in container.streams})
    if not kinds:
        return "no video stream: the file holds no stream at all (an empty or damaged container?)"
    return f"no video stream: the file holds only {' and '.join(kinds)} streams"


class _CutShort(ValueError):
    """A media file holds less than its own index or header declares (a cut download)."""


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded video frame as RGB ``uint8 [H, W, 3]`` (:func:`_frame_rgb`), turned by its display rotation
    (``frame.rotation``, counter-clockwise degrees, rounded to a quarter turn) so that it shows as a player
    shows it."""
    rgb = _frame_rgb(frame)
    turns = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _frame_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB ``uint8 [H, W, 3]``; a frame with transparency (a pixel format with an alpha
    component, as FFV1, QuickTime Animation, PNG-in-MOV, ProRes 4444 or an animated GIF give, or a palette,
    ``pal8``, whose entries carry an alpha: a palette PNG with a tRNS chunk in a MOV or AVI) composited onto
    white as images are (:func:`_rgb`): FFmpeg's conversion to rgb24 keeps whatever colour is stored under a
    transparent pixel. (PyAV marks no component of ``pal8`` as alpha; a palette without transparency has
    opaque entries, so compositing changes nothing there.)"""
    fmt = frame.format
    if not fmt.has_palette and not any(c.is_alpha for c in fmt.components):
        return frame.to_ndarray(format="rgb24")
    from PIL import Image

    return np.asarray(_rgb(Image.fromarray(frame.to_ndarray(format="rgba"), "RGBA")))


def _decode_frames(
    path: Path, wanted: set[int], threaded: bool = True, declared: int = 0
) -> tuple[dict[int, np.ndarray], int, bool, float | None]:
    """Decode the video stream of ``path``; keep the frames whose index is in ``wanted`` (upright: see
    :func:`_upright`).

    Returns the kept frames, the number of frames decoded (the whole clip when ``wanted`` is empty or
    reaches past its end), where the last decoded frame ends (seconds; None without timestamps) and whether
    the stream holds more than ``declared`` packets (with ``declared``
    > 0): after the last wanted frame the rest of the stream is demuxed, not decoded, to see whether the
    metadata understates the clip's length. ``threaded``: let FFmpeg decode with frame threads (faster,
    but a corrupt packet then ends the stream without an error); unthreaded decoding raises at a corrupt
    packet.
    """
    import av

    got: dict[int, np.ndarray] = {}
    last = max(wanted) if wanted else math.inf
    count = packets = 0
    end: float | None = None
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == "video"]
        if not streams:
            raise ValueError(_no_video(container))
        stream = streams[0]
        stream.thread_type = "AUTO" if threaded else "NONE"
        for packet in container.demux(stream):
            packets += 1 if packet.size else 0
            if count > last:  # every wanted frame is in: only look for packets past the declared length
                if not declared or packets > declared:
                    break
                continue
            for frame in packet.decode():  # the last, empty packet drains the decoder
                if count in wanted:
                    got[count] = _upright(frame)
                if frame.time is not None:
                    end = frame.time + (float(frame.duration * frame.time_base) if frame.duration else 0.0)
                count += 1
                if count > last:
                    break
    return got, count, 0 < declared < packets, end


def _index_shortfall(stream: av.stream.Stream, size: int, what: str) -> str | None:
    """Why ``stream`` is cut short: its container's index (an mp4's sample table, an avi's idx1 …) lists
    packets that lie past the end of the file (``size`` bytes), or None. An index read before the packets
    (FFmpeg reads an mp4's whole sample table on opening) says how much the file should hold; a download
    cut between packets otherwise just ends the stream early, without an error."""
    entries = getattr(stream, "index_entries", None)  # PyAV 15+
    if not entries:
        return None
    listed = len(entries)
    held = sum(1 for e in entries if e.pos < 0 or e.pos + e.size <= size)
    if held == listed:
        return None
    return f"the file is cut short: its index lists {listed:,} {what}, the file holds only {held:,} of them"


def _frame_count(path: Path) -> int:
    """Frames in the clip according to its metadata (0 when the container does not say); raises
    :class:`_CutShort` when the container's index lists frames past the end of the file."""
    import av

    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == "video"]
        if not streams:
            raise ValueError(_no_video(container))
        short = _index_shortfall(streams[0], path.stat().st_size, "video frames")
        if short:
            raise _CutShort(short)
        return int(streams[0].frames or 0)


def _matroska_shortfall(path: Path, end: float | None) -> str | None:
    """Why a Matroska/WebM clip is cut short, or None: its video track decodes to ``end`` seconds, short of the
    length its header states by more than :data:`AUDIO_SHORTFALL_SECONDS` and :data:`AUDIO_SHORTFALL_FRACTION`
    of it (the tolerance of a cut audio track). The stated length is the track's ``DURATION`` tag (FFmpeg and
    mkvmerge write one), else the segment's duration when the file holds no other stream (an audio track may
    outlast the video). Such a file has no frame count, and its index (cues) follows the frames, so a cut
    download just ends the stream; other containers: None (an mp4's or avi's index is checked on opening, an
    MPEG-TS states no length: FFmpeg estimates one from the bit rate; :func:`_mpegts_shortfall` checks that it
    ends with a whole packet)."""
    import av

    with av.open(str(path)) as container:
        if "matroska" not in container.format.name.split(",") or end is None:
            return None
        stream = next(s for s in container.streams if s.type == "video")
        tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
        if tag:
            try:
                h, m, sec = tag.split(":")
                declared = 3600 * int(h) + 60 * int(m) + float(sec)
            except ValueError:
                return None
        elif container.duration and len(container.streams) == 1:
            declared = container.duration / av.time_base
        else:
            return None
    if declared - end > max(AUDIO_SHORTFALL_SECONDS, AUDIO_SHORTFALL_FRACTION * declared):
        return f"the file is cut short: its header declares {declared:.2f} s of video, it decodes to {end:.2f} s"
    return None


def load_video(
    path: str | Path, num_frames: int, sampling: FrameSampling = "uniform", item_id: str = ""
) -> list[np.ndarray]:
    """Decode ``num_frames`` RGB frames (``uint8 [H, W, 3]``) sampled from the clip at ``path``."""
    path = Path(path)
    _check_exists(path, item_id)
    try:
        short = _mpegts_shortfall(path)  # a cut transport stream otherwise decodes to the cut without an error
        if short:
            raise _CutShort(short)
        total = _frame_count(path)
        if total > 0:
            wanted = sample_frame_indices(total, num_frames, sampling)
            got, _, more, _ = _decode_frames(path, set(wanted), declared=total)
            if len(got) == len(set(wanted)) and not more:
                return [got[i] for i in wanted]
        # fewer frames than the metadata said, more packets than it said, or no count in it: count them
        # unthreaded, which raises at a corrupt packet (a cut file), else gives the true length to sample from
        _, total, _, end = _decode_frames(path, set(), threaded=False)
        if total == 0:
            raise ValueError("the video stream has no frames")
        short = _matroska_shortfall(path, end)
        if short:
            raise _CutShort(short)
        wanted = sample_frame_indices(total, num_frames, sampling)
        got, _, _, _ = _decode_frames(path, set(wanted))
        return [got[i] for i in wanted]
    except MediaError:
        raise
    except _CutShort as e:
        raise MediaError(item_id, path, str(e)) from e
    except MemoryError as e:  # av.error.MemoryError too: a sound but very large video is no corrupt file
        raise MediaMemoryError(item_id, path, e) from e
    except Exception as e:  # PyAV raises FFmpegError subclasses, ValueError, StopIteration …
        raise MediaError(item_id, path, f"not a readable video ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------------------------- audio
def _scipy_resample_poly():
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy comes with the offline text model's dependencies
        return None
    return resample_poly


def resampler_name() -> str:
    """The resampler :func:`resample` uses here (recorded in cache manifests)."""
    return "scipy.signal.resample_poly" if _scipy_resample_poly() is not None else "numpy-windowed-sinc"


def resampled_length(n: int, orig_rate: int, target_rate: int) -> int:
    """Samples after resampling ``n`` samples from ``orig_rate`` to ``target_rate`` (ceil, as resample_poly)."""
    g = math.gcd(orig_rate, target_rate)
    up, down = target_rate // g, orig_rate // g
    return -(-n * up // down)


def _sinc_resample(x: np.ndarray, orig_rate: int, target_rate: int, half_width: int = 16) -> np.ndarray:
    """Band-limited interpolation with a Hann-windowed sinc kernel (anti-aliased when downsampling)."""
    ratio = target_rate / orig_rate
    n_out = resampled_length(len(x), orig_rate, target_rate)
    cutoff = min(1.0, ratio)  # as a fraction of the input Nyquist frequency
    reach = int(math.ceil(half_width / cutoff))  # kernel half-length in input samples
    offsets = np.arange(-reach + 1, reach + 1)
    out = np.empty(n_out, dtype=np.float64)
    xd = x.astype(np.float64)
    block = 16384
    for s in range(0, n_out, block):
        t = np.arange(s, min(n_out, s + block)) * (orig_rate / target_rate)  # output times, input units
        idx = np.floor(t).astype(np.int64)[:, None] + offsets[None, :]
        dist = t[:, None] - idx
        window = 0.5 * (1.0 + np.cos(np.pi * np.clip(dist / reach, -1.0, 1.0)))
        kernel = cutoff * np.sinc(cutoff * dist) * window
        valid = (idx >= 0) & (idx < len(x))
        out[s : s + len(t)] = (xd[np.clip(idx, 0, len(x) - 1)] * kernel * valid).sum(axis=1)
    return out.astype(np.float32)


def resample(
    x: np.ndarray, orig_rate: int, target_rate: int, method: Literal["auto", "scipy", "numpy"] = "auto"
) -> np.ndarray:
    """Resample a mono waveform from ``orig_rate`` to ``target_rate`` Hz.

    ``auto`` uses scipy's polyphase filter (``resample_poly``) when scipy is installed, else a
    windowed-sinc interpolator in numpy. Both low-pass at the lower Nyquist frequency, so downsampling
    does not alias; the output has ``ceil(len(x) · target / orig)`` samples.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {target_rate}")
    if orig_rate == target_rate or len(x) == 0:
        return x.copy()
    poly = _scipy_resample_poly() if method in ("auto", "scipy") else None
    if method == "scipy" and poly is None:
        raise ImportError("scipy is not installed")
    if poly is not None:
        g = math.gcd(orig_rate, target_rate)
        return poly(x, target_rate // g, orig_rate // g).astype(np.float32)
    return _sinc_resample(x, orig_rate, target_rate)


def _frames_for(seconds: float | None, rate: int) -> int | None:
    """Input samples to read for ``seconds`` of output at ``rate`` (a little margin for the resampling
    filter), or None for the whole track."""
    return None if seconds is None else int(math.ceil(seconds * rate)) + 64


_CHUNKED_AUDIO: dict[str, tuple[bytes, tuple[bytes, ...], bytes, Literal["little", "big"]]] = {
    # suffix: the container's id, its form types, the id of the chunk that holds the samples, the sizes' byte order
    ".wav": (b"RIFF", (b"WAVE",), b"data", "little"),
    ".aiff": (b"FORM", (b"AIFF", b"AIFC"), b"SSND", "big"),
    ".aif": (b"FORM", (b"AIFF", b"AIFC"), b"SSND", "big"),
    ".aifc": (b"FORM", (b"AIFF", b"AIFC"), b"SSND", "big"),
}


def _chunk_shortfall(path: Path) -> str | None:
    """Why a RIFF/WAVE or AIFF/AIFC file is cut short (its ``data``/``SSND`` chunk declares more bytes than
    the file holds), or None. libsndfile reads such a file up to its end without an error. A declared size
    of 0 or 0xFFFFFFFF (a stream written before its length was known) says nothing, and RF64/other containers
    are not checked."""
    container, forms, audio, order = _CHUNKED_AUDIO[path.suffix.lower()]
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != container or head[8:12] not in forms:
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            n = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == audio:
                if n in (0, 0xFFFFFFFF) or pos + 8 + n <= size:
                    return None
                held = size - pos - 8
                return f"the file is cut short: its header declares {n:,} bytes of audio, it holds {held:,}"
            pos += 8 + n + (n & 1)
    return None


def _au_shortfall(path: Path) -> str | None:
    """Why a Sun/NeXT ``.au``/``.snd`` file is cut short (its header declares more bytes of audio than follow
    it), or None; also None for an unknown length (0xFFFFFFFF) or another kind of file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b".snd":
        return None
    offset, n = int.from_bytes(head[4:8], "big"), int.from_bytes(head[8:12], "big")
    if n == 0xFFFFFFFF or offset + n <= size:
        return None
    return f"the file is cut short: its header declares {n:,} bytes of audio, it holds {max(0, size - offset):,}"


_W64_GUID_TAIL = {b"riff": bytes.fromhex("2e91cf11a5d628db04c10000")} | dict.fromkeys(
    (b"wave", b"data"), bytes.fromhex("f3acd3118cd100c04f8edb8a"))
"""The last 12 bytes of the Sony Wave64 GUIDs whose first 4 bytes are the RIFF ids ``riff``, ``wave``, ``data``."""


def _w64_shortfall(path: Path) -> str | None:
    """Why a Sony Wave64 (``.w64``) file is cut short (its ``data`` chunk declares more bytes than the file
    holds), or None. Wave64 is RIFF/WAVE with 16-byte GUIDs for ids and 64-bit little-endian chunk sizes that
    count the chunk's 24-byte header, chunks aligned to 8 bytes; libsndfile reads a cut one to its end
    without an error. A declared size below 24 (nothing known) or of all ones says nothing."""
    size = path.stat().st_size
    guid = {k: k + tail for k, tail in _W64_GUID_TAIL.items()}
    with open(path, "rb") as f:
        head = f.read(40)
        if len(head) < 40 or head[:16] != guid[b"riff"] or head[24:40] != guid[b"wave"]:
            return None
        pos = 40
        while pos + 24 <= size:
            f.seek(pos)
            chunk = f.read(24)
            n = int.from_bytes(chunk[16:24], "little")
            if n < 24 or n == 0xFFFF_FFFF_FFFF_FFFF:
                return None
            if chunk[:16] == guid[b"data"]:
                if pos + n <= size:
                    return None
                return (f"the file is cut short: its header declares {n - 24:,} bytes of audio, it holds "
                        f"{size - pos - 24:,}")
            pos += n + (-n % 8)
    return None


def _caf_shortfall(path: Path) -> str | None:
    """Why an Apple CAF file is cut short, or None. Its chunks state their sizes (64-bit big-endian): a cut
    ``data`` chunk (the audio) or ``pakt`` chunk (the packet table, which a compressed stream such as ALAC
    needs to find its packets) declares more bytes than the file holds. libsndfile refuses a cut CAF, but
    FFmpeg reads a cut PCM one to the cut without an error (a cut ALAC one it finds cut by its packet table,
    :func:`_index_shortfall`). A ``data`` size of -1 (a stream written before its length was known; the last
    chunk) states no length: such a PCM file cut short is not detected (an ALAC one neither reader opens)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8)[:4] != b"caff":
            return None
        pos = 8
        while pos + 12 <= size:
            f.seek(pos)
            chunk = f.read(12)
            kind, n = chunk[:4], int.from_bytes(chunk[4:12], "big", signed=True)
            if n < 0:  # -1: a data chunk running to the end of the file
                return None
            if pos + 12 + n > size:
                if kind == b"data":  # the audio follows a 4-byte edit count
                    return (f"the file is cut short: its header declares {max(0, n - 4):,} bytes of audio, it "
                            f"holds {max(0, size - pos - 16):,}")
                if kind == b"pakt":
                    return (f"the file is cut short: its packet table declares {n:,} bytes, it holds "
                            f"{size - pos - 12:,}")
                return None
            pos += 12 + n
    return None


def _mpegts_shortfall(path: Path) -> str | None:
    """Why an MPEG transport stream is cut short, or None (also for a file that is not one). A transport stream
    is a run of 188-byte packets (192 in a Blu-ray M2TS: a 4-byte time stamp first), each starting with the
    sync byte 0x47, and it states no length: FFmpeg reads a cut one to the cut without an error. A file whose
    size is not a whole number of packets, or whose last packet does not start with 0x47, was cut inside a
    packet; one cut exactly between two packets cannot be told from a shorter stream and is not detected. A
    file is taken for a transport stream when its first three packets (as many as it holds, at least two)
    start with 0x47."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(3 * 192)
        for packet, offset in ((188, 0), (192, 4)):
            starts = range(offset, min(len(head), 3 * packet), packet)
            if len(starts) >= 2 and all(head[i] == 0x47 for i in starts):
                break
        else:
            return None
        if size % packet:
            return (f"the file is cut short: it ends {size % packet} bytes into a {packet}-byte MPEG-TS packet "
                    f"(packet {size // packet + 1:,})")
        f.seek(size - packet + offset)
        if f.read(1) != b"\x47":
            return "the file is cut short: its last MPEG-TS packet does not start with the sync byte 0x47"
    return None


def _ogg_shortfall(path: Path) -> str | None:
    """Why an Ogg file is cut short (its last page is incomplete, or does not end its stream: every complete
    Ogg stream ends with a page flagged end-of-stream), or None; also None when no page header is found in
    the file's last 64 KiB (not an Ogg file: the readers say what it is). Both libsndfile and FFmpeg read a
    file cut between pages up to the cut, without an error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 65_536 - 282))  # a page is at most 27 + 255 + 255 · 255 bytes
        tail = f.read()
    at = tail.rfind(b"OggS")
    while at >= 0 and (tail[at + 4 : at + 5] != b"\x00" or len(tail) < at + 27):  # version 0, whole header
        at = tail.rfind(b"OggS", 0, at)
    if at < 0:
        return None
    segments = tail[at + 27 : at + 27 + tail[at + 26]]
    if len(segments) < tail[at + 26] or at + 27 + len(segments) + sum(segments) > len(tail):
        return "the file is cut short: its last Ogg page is incomplete"
    if not tail[at + 5] & 0x04:
        return "the file is cut short: its last Ogg page does not end the stream (no end-of-stream flag)"
    return None


SOUNDFILE_BLOCK_BYTES = 8 << 20
"""What libsndfile decodes at a time (as float32 frames of all channels, 256 frames at least): each block is
mixed down to mono before the next is read, so memory follows the seconds kept, not seconds × channels (255
channels of 30 s took 1.5 GB read in one piece)."""


def _read_soundfile(path: Path, seconds: float | None = None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        rate = int(f.samplerate)
        limit = _frames_for(seconds, rate)
        block = max(256, SOUNDFILE_BLOCK_BYTES // (4 * max(1, f.channels)))
        blocks, read = [], 0
        while limit is None or read < limit:
            data = f.read(frames=block if limit is None else min(block, limit - read), dtype="float32",
                          always_2d=True)
            if len(data) == 0:
                break
            read += len(data)
            blocks.append(data.mean(axis=1))  # per frame, as over the whole read: the same values
            del data  # before the next block is read
    return (np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)), rate


def _mp3_declares_length(path: Path) -> bool:
    """Whether an mp3's first frame carries a Xing/Info or VBRI header, which states the track's length. Without
    one FFmpeg only estimates the duration from the first frame's bit rate, which for a VBR file can be far
    off either way."""
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag: its size is 4 bytes of 7 bits, + a footer
            size = sum((head[6 + i] & 0x7F) << (7 * (3 - i)) for i in range(4))
            start = 10 + size + (10 if head[5] & 0x10 else 0)
        f.seek(start)
        frame = f.read(4096)
    sync = next((i for i in range(len(frame) - 1) if frame[i] == 0xFF and frame[i + 1] & 0xE0 == 0xE0), None)
    return sync is not None and any(tag in frame[sync : sync + 64] for tag in (b"Xing", b"Info", b"VBRI"))


AUDIO_SHORTFALL_SECONDS, AUDIO_SHORTFALL_FRACTION = 0.5, 0.1
"""A track decoded to its end is cut short when it falls short of its declared duration by more than both of
these. A complete file decodes to within a few frames of what it declares (encoder delay and padding: ~50
ms for an mp3, ~46 ms of AAC priming); half a second and a tenth of the track are far beyond that, while a
download cut anywhere before the last tenth is caught."""


def _read_pyav(path: Path, seconds: float | None = None) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    kept = 0
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise ValueError("no audio stream")
        stream = streams[0]
        short = _index_shortfall(stream, path.stat().st_size, "audio packets")
        if short:
            raise _CutShort(short)
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        limit = _frames_for(seconds, rate) if rate > 0 else None
        converter = av.AudioResampler(format="fltp")  # sample format only; the rate is kept
        for frame in container.decode(stream):
            for out in converter.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))
                kept += chunks[-1].shape[0]
            if limit is not None and kept >= limit:
                break
        else:
            for out in converter.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
                kept += chunks[-1].shape[0]
            # decoded to the end: an mp3 whose header states its length, or a flac (its STREAMINFO), must reach
            # it (see the tolerance above). libsndfile fails on a flac cut between two frames; FFmpeg ends there
            kind = {"mp3", "flac"} & set(container.format.name.split(","))
            if rate > 0 and stream.duration and kind:
                declared = float(stream.duration * stream.time_base)
                got = kept / rate
                if declared - got > max(AUDIO_SHORTFALL_SECONDS, AUDIO_SHORTFALL_FRACTION * declared):
                    if "flac" in kind or _mp3_declares_length(path):
                        raise _CutShort(f"the file is cut short: its header declares {declared:.2f} s of audio, "
                                        f"it decodes to {got:.2f} s")
    if rate <= 0:
        raise ValueError("unknown sample rate")
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave, rate


_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64", ".caf"}


def read_audio(path: str | Path, item_id: str = "", seconds: float | None = None) -> tuple[np.ndarray, int]:
    """The waveform of an audio file (or a video's audio track), mono float32, and its rate: the whole track,
    or with ``seconds`` at least its first ``seconds`` (only that much is decoded; a little more is kept as
    margin for resampling)."""
    path = Path(path)
    _check_exists(path, item_id)
    check = {".ogg": _ogg_shortfall, ".oga": _ogg_shortfall, ".opus": _ogg_shortfall, ".au": _au_shortfall,
             ".snd": _au_shortfall, ".w64": _w64_shortfall, ".caf": _caf_shortfall} | dict.fromkeys(
        _CHUNKED_AUDIO, _chunk_shortfall) | dict.fromkeys((".ts", ".mts", ".m2ts"), _mpegts_shortfall)
    if path.suffix.lower() in check:
        try:
            short = check[path.suffix.lower()](path)
        except OSError as e:
            raise MediaError(item_id, path, f"not a readable audio file ({type(e).__name__}: {e})") from e
        if short:
            raise MediaError(item_id, path, short)
    readers = [_read_soundfile, _read_pyav] if path.suffix.lower() in _SOUNDFILE_SUFFIXES else [_read_pyav]
    names = {_read_soundfile: "soundfile", _read_pyav: "PyAV"}
    failures: list[str] = []  # what each reader that failed said
    first_error: Exception | None = None
    for reader in readers:
        try:
            wave, rate = reader(path, seconds)
        except _CutShort as e:
            raise MediaError(item_id, path, str(e)) from e
        except MemoryError as e:  # no reader's failure: the next would run out too, and the file is no corrupt one
            raise MediaMemoryError(item_id, path, e) from e
        except Exception as e:  # soundfile: LibsndfileError; PyAV: FFmpegError subclasses, ValueError
            first_error = first_error or e
            failures.append(f"{names[reader]}: {type(e).__name__}: {e}")
            continue
        if len(wave) == 0:  # libsndfile reads a cut ogg as empty, without an error: let the next reader try
            failures.append(f"{names[reader]}: no samples")
            continue
        if not np.all(np.isfinite(wave)):
            raise MediaError(item_id, path, "the audio holds NaN or infinite samples")
        if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:  # a damaged header; resampling from it can need GiBs
            raise MediaError(item_id, path, f"sample rate {rate:,} Hz is outside {MIN_AUDIO_RATE:,}–"
                                            f"{MAX_AUDIO_RATE:,} Hz (a damaged header?)")
        return wave, rate
    if first_error is None:  # every reader read the file to its end and found nothing in it
        raise MediaError(item_id, path, "the audio holds no samples")
    if any(f.endswith(": no samples") for f in failures):
        raise MediaError(
            item_id, path, f"no audio could be decoded, a cut or corrupt file ({'; '.join(failures)})"
        ) from first_error
    raise MediaError(
        item_id, path, f"not a readable audio file ({type(first_error).__name__}: {first_error})"
    ) from first_error


MIN_AUDIO_RATE, MAX_AUDIO_RATE = 1_000, 768_000
"""Sample rates an audio file may declare (telephone 8 kHz … 768 kHz studio formats)."""


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Cut ``wave`` to ``length`` samples or zero-pad it at the end."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


def load_audio(
    path: str | Path, sample_rate: int, seconds: float, item_id: str = "", pad: bool = True
) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate``, cut to ``seconds`` (and zero-padded to it when ``pad``)."""
    wave, rate = read_audio(path, item_id, seconds)  # decodes only what is kept, plus the filter's margin
    length = int(round(seconds * sample_rate))
    keep = min(len(wave), _frames_for(seconds, rate) or len(wave))
    wave = resample(wave[:keep], rate, sample_rate)
    wave = wave[:length]
    return fit_length(wave, length) if pad else wave
