"""Built-in multimodal demo dataset: items with text, cover image, video and audio; users with drifting tastes.

:func:`generate` writes a folder in the MicroLens / IISAN layout that the project's loaders read::

    items.tsv          header ``item_id<TAB>title<TAB>image<TAB>video<TAB>audio``, one row per item; media
                       paths are relative to the folder; an empty cell means the item lacks that modality
    users.tsv          ``user_id<TAB>item item item ...`` (items in time order, no header)
    images/<item>.png  64x64 RGB cover
    videos/<item>.mp4  12 frames, 64x64, 4 fps (H.264 through libx264 where PyAV has it, else MPEG-4 part 2)
    audio/<item>.wav   16 kHz mono, 1.5 s, 16-bit PCM
    items_meta.json    per item: its latent attributes, which modalities it has, its popularity term
    users_meta.json    per user: the taste that generated the history (slots, drift, echo attribute)
    meta.json          generator name and version, parameters, counts, attribute vocabularies, model constants
    README.md          the same in words

Latent design. Every modality carries its own two latent attributes, drawn independently per item:
text — *topic* and *style* (a readable title such as "Vintage jazz piano session"); image — *colour* and
*shape* of the drawn figure; video — *motion* (a blob moving right/left/up/down or orbiting clockwise /
anticlockwise) and *speed*; audio — *pitch* (tone frequency) and *tempo* (beat rate). Everything else in a
file (background, jitter, noise, blob colour, timbre) is uninformative. Each user has a taste: 2–3 *slots*,
each a preferred value of one attribute, taken from 2–3 different modalities, with a jittered weight. The
next item is drawn without replacement with probability proportional to
``exp(sum of slot weights the item matches + echo + popularity)`` where *echo* rewards agreeing with the
previous item on one per-user attribute (a first-order sequential effect) and *popularity* is a per-item
Gaussian term. Part-way through the history (40–70 % of its length) one slot drifts to a new value, so
recent items predict the next one better than old ones. No single modality explains the data: a model that
sees only one modality sees only the slots that fall on it. With ``dominant=m`` both slots of modality
``m`` are in every taste, the echo attribute belongs to ``m``, and one weak slot from another modality
remains. Text is present for every item; ``missing_rate`` applies to image, video and audio independently
(empty cell, no file); a missing file hides the item's attributes from a model, not from the user model
that generated the data.

Determinism: every random draw comes from ``numpy.random.default_rng`` seeded from ``seed`` (per item and
stream through a seed sequence), slot weights are multiples of 2**-10 so that their sums are exact, the video
encoder runs single-threaded with bit-exact muxing (no creation time, no encoder tag) and, for libx264, at a
constant quantiser, and no timestamp is written anywhere, so the same parameters give byte-identical files. Up
to version 2, libx264 ran with CRF rate control, whose floating-point decisions depended on the state of the
process: importing torch changed the bytes of 34 of the small set's 891 clips, and setting torch's
flush-denormal mode changed 65; a constant quantiser gave the same bytes in all three. Clips made by different
commands differed in 92–137 of 891. A test now generates clips in two such processes and compares their bytes.
Other library versions (another x264) may still encode the same frames to other bytes.

Modules: :mod:`.vocab` (sizes, attribute vocabularies, media and taste constants), :mod:`.world` (items and
users: latent attributes and tastes), :mod:`.media` (rendering and writing covers, clips and sounds),
:mod:`.files` (tables, metadata, README); this module holds the public API and the output-folder checks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from crossan.cache.lock import build_lock
from crossan.data.synth.files import _write_meta, _write_tables, dataset_digest
from crossan.data.synth.media import _video_codec, _write_media, render_audio, render_image, render_video  # noqa: F401
from crossan.data.synth.vocab import (  # noqa: F401  (the constants stay importable from here)
    ATTRIBUTE_KEYS,
    ATTRIBUTES,
    AUDIO_RATE,
    AUDIO_SECONDS,
    COLOURS,
    DRIFT_RANGE,
    ECHO_WEIGHT,
    GENERATOR,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    MEDIA_MODALITIES,
    MODALITY_ORDER,
    MOTIONS,
    PITCHES,
    POPULARITY_SCALE,
    SHAPES,
    SIZES,
    SPEEDS,
    STYLES,
    TASTE_WEIGHT,
    TEMPOS,
    TOPICS,
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_SIZE,
    WEAK_SLOT_FACTOR,
    SizeSpec,
)
from crossan.data.synth.world import _make_items, _make_users
from crossan.errors import CrossanError, WriteError
from crossan.utils import write_failure


class SynthError(CrossanError, FileExistsError):
    """The output folder exists and is not a complete dataset generated with the requested parameters."""


# ------------------------------------------------------------------------------------------ public API


def generate(
    out: Path | str,
    size: str = "small",
    seed: int = 0,
    missing_rate: float = 0.1,
    dominant: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic multimodal dataset to ``out`` and return its path.

    Args:
        out: dataset folder to create. Built in ``<out>.partial`` and renamed at the end. If ``out`` already
            holds a complete dataset generated with the same parameters it is returned untouched; any other
            existing ``out`` is an error. One process writes it at a time (an exclusive lock on
            ``.<name>.lock`` beside it, left there): a second one waits, then finds it complete.
        size: one of :data:`SIZES` (``tiny`` for tests, ``small`` the demo, ``medium``, ``large``).
        seed: seed of every random draw; the same parameters give byte-identical files.
        missing_rate: share of items lacking each of image, video and audio (independently). Text is
            always present.
        dominant: a modality whose attributes carry most of the users' taste, or None for tastes spread over
            two or three modalities.
        progress: show progress bars on stderr.

    Raises:
        SynthError: ``out`` exists and is not a complete dataset with these parameters, or a stale
            ``<out>.partial`` is not one of ours.
        ValueError: an unknown size or modality, or a missing rate outside [0, 1).
    """
    out = Path(out)
    params = _check_params(size, seed, missing_rate, dominant)
    if out.exists():
        _check_existing(out, params)
        return out
    # one writer at a time: a second process (another `crossan data synth`, a suite) waits here, then finds
    # the dataset complete; without the lock it removed or wrote into the first one's partial folder
    with build_lock(out.with_name(f".{out.name}.lock"), f"dataset {out}", "crossan data synth process",
                    "writing it"):
        if out.exists():
            _check_existing(out, params)
            return out
        try:
            return _generate(out, params, size, seed, missing_rate, dominant, progress)
        except Exception as e:  # a full disk or a file-size limit: named, not a media library's traceback
            why = write_failure(e, out.parent)
            if why is None and type(e).__name__ == "LibsndfileError":  # soundfile says "System error." only
                why = f"the audio writer failed: {e}"
            if why is None:
                raise
            raise WriteError(f"{out}: cannot write the dataset ({why}); run the command again once that is "
                             f"mended (the unfinished {out.name}.partial beside it is started over)") from None


def _generate(out: Path, params: dict, size: str, seed: int, missing_rate: float, dominant: str | None,
              progress: bool) -> Path:
    """:func:`generate`'s work, under its lock."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        if not (partial / _PARTIAL_MARKER).is_file():
            raise SynthError(
                f"{partial} exists and was not made by {GENERATOR}; remove it or choose another out"
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / _PARTIAL_MARKER).write_text("incomplete output of crossan.data.synth.generate\n")

    spec = SIZES[size]
    items = _make_items(spec.n_items, seed, missing_rate)
    histories, tastes = _make_users(items, spec, seed, dominant)
    codec = _video_codec()
    _write_media(partial, items, seed, codec, progress)
    _write_tables(partial, items, histories)
    _write_meta(partial, params, items, histories, tastes, codec)
    (partial / _PARTIAL_MARKER).unlink()
    os.replace(partial, out)
    return out


def is_complete(out: Path | str) -> bool:
    """Whether ``out`` holds a complete dataset written by this generator (any parameters)."""
    meta = _read_meta(Path(out))
    return meta is not None and meta.get("complete") is True


def synth_digest(out: Path | str) -> str | None:
    """The content digest of the complete synthetic dataset in ``out`` (:func:`~crossan.data.synth.files.
    dataset_digest`), computed now from its files (0.8 s for the demo's 57 MB here); None when
    ``out`` is no dataset of this generator.

    Raises:
        SynthError: the files differ from those the generator wrote (the digest its ``meta.json`` records):
            a report must not give the recorded digest for changed data.
    """
    meta = _read_meta(Path(out))
    if meta is None or meta.get("complete") is not True:
        return None
    return _verified_digest(Path(out), meta)


def _verified_digest(out: Path, meta: dict[str, Any]) -> str:
    now = dataset_digest(out)
    recorded = meta.get("digest")
    if recorded and recorded != now:
        raise SynthError(f"{out}: its files differ from what {GENERATOR} wrote (content digest recorded in "
                         f"meta.json {recorded}, of the files now {now}): a file was changed, added or removed "
                         "since. Remove the folder to generate it again, or choose another out")
    return now


def item_attribute_table(items_meta: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Turn a loaded ``items_meta.json`` into (item ids, int array [n_items, n_attributes]) of value indices.

    Column ``j`` holds the index of the item's value of ``ATTRIBUTE_KEYS[j]`` in its vocabulary.
    """
    ids = list(items_meta)
    table = np.array(
        [[ATTRIBUTES[m][a].index(items_meta[i][m][a]) for m, a in ATTRIBUTE_KEYS] for i in ids],
        dtype=np.int64,
    )
    return ids, table.reshape(len(ids), len(ATTRIBUTE_KEYS))


# ------------------------------------------------------------------------------------------ parameters

_PARTIAL_MARKER = ".synth-partial"


def _check_params(size: str, seed: int, missing_rate: float, dominant: str | None) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {tuple(SIZES)}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1), got {missing_rate}")
    if dominant is not None and dominant not in MODALITY_ORDER:
        raise ValueError(f"unknown dominant modality {dominant!r}; expected one of {MODALITY_ORDER} or None")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return {"size": size, "seed": int(seed), "missing_rate": float(missing_rate), "dominant": dominant}


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        return None
    return meta


def _check_existing(out: Path, params: dict[str, Any]) -> None:
    meta = _read_meta(out)
    if meta is None or meta.get("complete") is not True:
        raise SynthError(
            f"{out} exists and is not a complete dataset generated by {GENERATOR}; remove it or choose another out"
        )
    if meta.get("version") != GENERATOR_VERSION or meta.get("params") != params:
        raise SynthError(
            f"{out} holds a dataset generated with other parameters "
            f"(version {meta.get('version')}, {meta.get('params')}); wanted version {GENERATOR_VERSION}, "
            f"{params}. Remove it or choose another out"
        )
    _verified_digest(out, meta)

