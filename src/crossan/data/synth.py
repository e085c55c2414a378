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
stream through a seed sequence), slot weights are multiples of 2**-10 so that their sums are exact, the
video encoder runs single-threaded with bit-exact muxing (no creation time, no encoder tag), and no
timestamp is written anywhere, so the same parameters give byte-identical files (checked run to run on one
machine; other library versions, e.g. another x264, may encode the same frames to other bytes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR = "crossan.data.synth"
GENERATOR_VERSION = 2
"""2: the ``small`` size has 1,000 items (version 1: 500), about 28 interactions per item."""

MEDIA_MODALITIES: tuple[str, ...] = ("image", "video", "audio")
MODALITY_ORDER: tuple[str, ...] = ("text", "image", "video", "audio")

# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class SizeSpec:
    """How many items and users a size has, and the range of history lengths (inclusive)."""

    n_items: int
    n_users: int
    min_len: int
    max_len: int


# Interactions per item (mean history length x users / items): tiny about 15, small about 28, medium and
# large about 70. Content towers earn their keep where items have few interactions each; the demo's small size
# has 1,000 items since version 2 (500 before, about 56 interactions each, where an item-ID model learned every
# item well enough to match four modalities through randomly initialised encoders).
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(n_items=60, n_users=100, min_len=6, max_len=12),
    "small": SizeSpec(n_items=1000, n_users=2000, min_len=8, max_len=20),
    "medium": SizeSpec(n_items=2000, n_users=10000, min_len=8, max_len=20),
    "large": SizeSpec(n_items=10000, n_users=50000, min_len=8, max_len=20),
}

# ------------------------------------------------------------------------------------------ vocabularies

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # topic: (subjects, formats)
    "jazz": (
        ("jazz piano", "saxophone", "swing band", "bebop trio", "jazz guitar"),
        ("session", "jam", "set", "night", "improv"),
    ),
    "cooking": (
        ("pasta", "street food", "sourdough bread", "curry", "dessert"),
        ("recipe", "tutorial", "cook-along", "kitchen tips", "taste test"),
    ),
    "travel": (
        ("mountain village", "island", "city walk", "desert road", "coastal town"),
        ("vlog", "tour", "diary", "guide", "adventure"),
    ),
    "fitness": (
        ("yoga", "home workout", "running", "stretching", "kettlebell"),
        ("routine", "challenge", "class", "drill", "plan"),
    ),
    "gaming": (
        ("retro arcade", "speedrun", "strategy game", "racing game", "puzzle game"),
        ("playthrough", "highlights", "walkthrough", "livestream", "review"),
    ),
    "pets": (
        ("kitten", "puppy", "parrot", "hamster", "golden retriever"),
        ("moments", "compilation", "training", "day out", "antics"),
    ),
    "science": (
        ("chemistry", "astronomy", "physics", "robotics", "biology"),
        ("experiment", "explainer", "lecture", "demo", "lab notes"),
    ),
    "fashion": (
        ("streetwear", "sneaker", "summer outfit", "thrift", "tailoring"),
        ("haul", "lookbook", "styling tips", "try-on", "showcase"),
    ),
}

STYLES: dict[str, tuple[str, ...]] = {
    # style: words that express it in a title
    "vintage": ("vintage", "retro", "old-school"),
    "modern": ("modern", "contemporary", "fresh"),
    "cozy": ("cozy", "relaxing", "calm"),
    "epic": ("epic", "intense", "wild"),
    "minimal": ("minimal", "simple", "clean"),
    "playful": ("playful", "funny", "quirky"),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 200),
    "pink": (240, 110, 180),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

MOTIONS: tuple[str, ...] = ("right", "left", "up", "down", "clockwise", "anticlockwise")
SPEEDS: dict[str, tuple[float, float]] = {
    # speed: (pixels per frame for linear motion, radians per frame for orbits)
    "slow": (1.5, 0.2),
    "medium": (3.0, 0.4),
    "fast": (5.0, 0.7),
}

PITCHES: dict[str, float] = {"G3": 196.0, "C4": 261.63, "E4": 329.63, "A4": 440.0, "D5": 587.33, "G5": 783.99}
TEMPOS: dict[str, float] = {"largo": 1.5, "andante": 2.5, "allegro": 4.0, "presto": 6.0}  # beats per second

ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "text": {"topic": tuple(TOPICS), "style": tuple(STYLES)},
    "image": {"colour": tuple(COLOURS), "shape": SHAPES},
    "video": {"motion": MOTIONS, "speed": tuple(SPEEDS)},
    "audio": {"pitch": tuple(PITCHES), "tempo": tuple(TEMPOS)},
}
"""Latent attributes per modality and their values (each item holds one value of every attribute)."""

ATTRIBUTE_KEYS: tuple[tuple[str, str], ...] = tuple((m, a) for m in MODALITY_ORDER for a in ATTRIBUTES[m])
"""Flat order of the attributes: column j of the item attribute matrix is ``ATTRIBUTE_KEYS[j]``."""

# ------------------------------------------------------------------------------------------ media constants

IMAGE_SIZE = 64
VIDEO_SIZE = 64
VIDEO_FRAMES = 12
VIDEO_FPS = 4
AUDIO_RATE = 16_000
AUDIO_SECONDS = 1.5

# ------------------------------------------------------------------------------------------ taste model

TASTE_WEIGHT = 2.5
"""Weight of a taste slot (the log-odds bonus of an item that matches it), jittered by x0.75..1.25 per user."""
WEAK_SLOT_FACTOR = 0.4
"""With ``dominant``, the one slot outside the dominant modality has this share of the weight."""
ECHO_WEIGHT = 1.5
"""Bonus of an item that agrees with the previous item on the user's echo attribute."""
POPULARITY_SCALE = 0.5
"""Standard deviation of the per-item popularity log-odds."""
DRIFT_RANGE = (0.4, 0.7)
"""A slot changes value at a step drawn uniformly in this share of the history length."""
_USER_CHUNK = 1024  # users sampled together; fixed so that the random stream does not depend on the machine

# seed-sequence stream ids, so that each use of randomness has its own independent stream
_STREAM_ITEMS, _STREAM_USERS, _STREAM_TEXT, _STREAM_IMAGE, _STREAM_VIDEO, _STREAM_AUDIO = range(6)


class SynthError(FileExistsError):
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
            existing ``out`` is an error.
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


# ------------------------------------------------------------------------------------------ items


@dataclass
class _Items:
    ids: list[str]
    attrs: np.ndarray  # [n, n_attributes] value indices, columns in ATTRIBUTE_KEYS order
    present: np.ndarray  # [n, 4] bool, columns in MODALITY_ORDER
    popularity: np.ndarray  # [n] float log-odds
    titles: list[str]

    def value(self, i: int, modality: str, attribute: str) -> str:
        j = ATTRIBUTE_KEYS.index((modality, attribute))
        return ATTRIBUTES[modality][attribute][int(self.attrs[i, j])]


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent generator for one (stream, index) pair, all derived from ``seed``."""
    return np.random.default_rng([seed, stream, index])


def _make_items(n: int, seed: int, missing_rate: float) -> _Items:
    rng = _rng(seed, _STREAM_ITEMS)
    cards = [len(ATTRIBUTES[m][a]) for m, a in ATTRIBUTE_KEYS]
    attrs = np.stack([rng.integers(0, c, size=n) for c in cards], axis=1)
    present = np.ones((n, len(MODALITY_ORDER)), dtype=bool)
    present[:, 1:] = rng.random((n, len(MEDIA_MODALITIES))) >= missing_rate
    popularity = rng.normal(0.0, POPULARITY_SCALE, size=n)
    width = max(5, len(str(n)))
    ids = [f"i{k + 1:0{width}d}" for k in range(n)]
    items = _Items(ids=ids, attrs=attrs, present=present, popularity=popularity, titles=[])
    items.titles = [_title(items, k, _rng(seed, _STREAM_TEXT, k)) for k in range(n)]
    return items


def _title(items: _Items, k: int, rng: np.random.Generator) -> str:
    """A readable title expressing the item's topic and style: '<Style word> <subject> <format>'."""
    subjects, formats = TOPICS[items.value(k, "text", "topic")]
    style_words = STYLES[items.value(k, "text", "style")]
    style_word = style_words[rng.integers(len(style_words))]
    subject = subjects[rng.integers(len(subjects))]
    fmt = formats[rng.integers(len(formats))]
    return f"{style_word.capitalize()} {subject} {fmt}"


# ------------------------------------------------------------------------------------------ users


@dataclass
class _Taste:
    slots: list[tuple[int, int, float]]  # (attribute column, preferred value, weight)
    echo: int  # attribute column the next item tends to share with the previous one
    drift_step: int  # first step that sees the drifted value
    drift_slot: int
    drift_value: int


def _slot_weight(rng: np.random.Generator, scale: float) -> float:
    """A jittered slot weight, rounded to a multiple of 2**-10 so that sums of weights are exact."""
    return round(scale * float(rng.uniform(0.75, 1.25)) * 1024) / 1024


def _draw_taste(rng: np.random.Generator, length: int, dominant: str | None) -> _Taste:
    cards = [len(ATTRIBUTES[m][a]) for m, a in ATTRIBUTE_KEYS]
    columns_of = {m: [j for j, (mm, _) in enumerate(ATTRIBUTE_KEYS) if mm == m] for m in MODALITY_ORDER}
    slots: list[tuple[int, int, float]] = []
    if dominant is None:
        n_slots = int(rng.integers(2, 4))
        modalities = rng.choice(len(MODALITY_ORDER), size=n_slots, replace=False)
        for m in modalities:
            cols = columns_of[MODALITY_ORDER[int(m)]]
            col = cols[int(rng.integers(len(cols)))]
            slots.append((col, int(rng.integers(cards[col])), _slot_weight(rng, TASTE_WEIGHT)))
        echo = int(rng.integers(len(ATTRIBUTE_KEYS)))
    else:
        for col in columns_of[dominant]:
            slots.append((col, int(rng.integers(cards[col])), _slot_weight(rng, TASTE_WEIGHT)))
        others = [m for m in MODALITY_ORDER if m != dominant]
        cols = columns_of[others[int(rng.integers(len(others)))]]
        col = cols[int(rng.integers(len(cols)))]
        slots.append((col, int(rng.integers(cards[col])), _slot_weight(rng, TASTE_WEIGHT * WEAK_SLOT_FACTOR)))
        dom_cols = columns_of[dominant]
        echo = dom_cols[int(rng.integers(len(dom_cols)))]
    lo, hi = (max(1, math.ceil(f * length)) for f in DRIFT_RANGE)
    drift_step = int(rng.integers(lo, max(lo, hi) + 1))
    drift_slot = int(rng.integers(len(slots)))
    col, old, _ = slots[drift_slot]
    new = int(rng.integers(cards[col] - 1))
    drift_value = new + (new >= old)  # any value but the old one
    return _Taste(slots, echo, drift_step, drift_slot, drift_value)


def _make_users(
    items: _Items, spec: SizeSpec, seed: int, dominant: str | None
) -> tuple[list[list[int]], list[_Taste]]:
    """Sample every user's history (item indices in time order) from the taste model."""
    if spec.max_len > len(items.ids):
        raise ValueError("histories cannot be longer than the catalogue (items are not repeated)")
    rng = _rng(seed, _STREAM_USERS)
    lengths = rng.integers(spec.min_len, spec.max_len + 1, size=spec.n_users)
    tastes = [_draw_taste(rng, int(n), dominant) for n in lengths]
    histories: list[list[int]] = []
    for start in range(0, spec.n_users, _USER_CHUNK):
        chunk = range(start, min(start + _USER_CHUNK, spec.n_users))
        histories.extend(
            _sample_chunk(items, [tastes[u] for u in chunk], lengths[chunk.start : chunk.stop], rng)
        )
    return histories, tastes


def _sample_chunk(
    items: _Items, tastes: list[_Taste], lengths: np.ndarray, rng: np.random.Generator
) -> list[list[int]]:
    """Draw the histories of a group of users step by step, vectorised over users.

    A user's weight for item i is ``exp(popularity_i + matched slot weights)``, times ``exp(ECHO_WEIGHT)``
    when i shares the previous item's value of the user's echo attribute. Per user, items are laid out
    grouped by their echo-attribute value, and the cumulative weights along that layout are kept, so a
    step costs O(classes + log items) per user: draw the echo class from the class masses (the previous
    item's class boosted), then an item inside the class by binary search. Items already in the history
    are rejected and redrawn, which samples exactly from the remaining items. The layout changes only
    when a user's taste drifts.
    """
    order = np.argsort(-lengths, kind="stable")  # longest first: the users still drawing form a prefix
    tastes = [tastes[u] for u in order]
    lengths = lengths[order]
    n_users, n_items = len(tastes), len(items.ids)
    attrs_t = items.attrs.T  # [n_attributes, n_items]
    n_values = max(len(v) for m in ATTRIBUTES.values() for v in m.values())
    by_value = np.stack([np.argsort(row, kind="stable") for row in attrs_t])  # [n_attributes, n_items]
    bounds = np.stack(
        [np.searchsorted(row[perm], np.arange(n_values + 1)) for row, perm in zip(attrs_t, by_value)]
    )
    slots = [list(t.slots) for t in tastes]  # current slots; a drift rewrites one value
    echo = np.array([t.echo for t in tastes])
    user_bounds = bounds[
        echo
    ]  # [n_users, n_values + 1]: class c of user u spans [user_bounds[u, c], [u, c+1])
    layout = by_value[echo]  # [n_users, n_items]: item at each position of the user's layout
    cum = np.zeros((n_users, n_items + 1))  # cum[u, p] = total weight of the first p items of the layout

    offsets = np.cumsum([0] + [len(ATTRIBUTES[m][a]) for m, a in ATTRIBUTE_KEYS])
    one_hot = np.zeros((n_items, int(offsets[-1])))  # [n_items, all attribute values]
    for col in range(len(ATTRIBUTE_KEYS)):
        one_hot[np.arange(n_items), offsets[col] + attrs_t[col]] = 1.0

    def refresh(users: np.ndarray) -> None:
        taste = np.zeros((len(users), one_hot.shape[1]))
        for r, u in enumerate(users):
            for col, value, weight in slots[u]:
                taste[r, offsets[col] + value] += weight
        # slot weights are multiples of 2**-10, so this product is exact whatever the BLAS summation order
        logits = taste @ one_hot.T + items.popularity
        weights = np.exp(np.take_along_axis(logits, layout[users], axis=1))
        cum[users, 1:] = np.cumsum(weights, axis=1)

    refresh(np.arange(n_users))
    echo_boost = math.exp(ECHO_WEIGHT) - 1.0
    drift_step = np.array([t.drift_step for t in tastes])
    picks = np.full((n_users, int(lengths.max())), -1, dtype=np.int64)
    for step in range(picks.shape[1]):
        active = int(np.count_nonzero(lengths > step))
        drifted = np.flatnonzero(drift_step[:active] == step)
        for u in drifted:
            col, _, weight = slots[u][tastes[u].drift_slot]
            slots[u][tastes[u].drift_slot] = (col, tastes[u].drift_value, weight)
        if len(drifted):
            refresh(drifted)
        users = np.arange(active)
        ends = np.take_along_axis(cum[:active], user_bounds[:active], axis=1)
        mass = np.diff(ends, axis=1)  # [active, n_values]
        if step > 0:
            previous = attrs_t[echo[:active], picks[:active, step - 1]]
            mass[users, previous] *= 1.0 + echo_boost
        pending = users
        while len(pending):
            u_cls, u_item = rng.random((2, len(pending)))
            class_cum = np.cumsum(mass[pending], axis=1)
            cls = np.count_nonzero(class_cum <= (u_cls * class_cum[:, -1])[:, None], axis=1)
            cls = np.minimum(cls, n_values - 1)
            lo, hi = user_bounds[pending, cls], user_bounds[pending, cls + 1]
            target = cum[pending, lo] + u_item * (cum[pending, hi] - cum[pending, lo])
            position = _first_above(cum, pending, target, lo, hi)
            choice = layout[pending, position]
            picks[pending, step] = choice
            repeated = (picks[pending, :step] == choice[:, None]).any(axis=1)
            pending = pending[repeated]
    histories: list[list[int]] = [[] for _ in range(n_users)]
    for r, u in enumerate(order):
        histories[u] = picks[r, : int(lengths[r])].tolist()
    return histories


def _first_above(
    cum: np.ndarray, rows: np.ndarray, target: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Per k: the first position p in [lo[k], hi[k]) with ``cum[rows[k], p + 1] > target[k]`` (binary search).

    ``cum`` has a leading zero column, so ``cum[r, p + 1]`` is the weight up to and including position p.
    """
    lo, hi = lo.copy(), hi - 1  # answer in [lo, hi]; hi is the class's last position
    for _ in range(max(1, int(np.ceil(np.log2(cum.shape[1])))) + 1):
        mid = (lo + hi) // 2
        above = cum[rows, mid + 1] > target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, np.minimum(mid + 1, hi))
    return lo


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
    # bit-exact muxing: no encoder tag, no creation time; single thread: same bytes on any machine
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
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


# ------------------------------------------------------------------------------------------ tables, metadata


def _write_tables(root: Path, items: _Items, histories: list[list[int]]) -> None:
    lines = ["item_id\ttitle\timage\tvideo\taudio"]
    for k, item_id in enumerate(items.ids):
        cells = [item_id, items.titles[k]]
        cells += [
            _media_path(m, item_id) if items.present[k, j + 1] else "" for j, m in enumerate(MEDIA_MODALITIES)
        ]
        lines.append("\t".join(cells))
    (root / "items.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    user_ids = _user_ids(len(histories))
    rows = [f"{user_id}\t" + " ".join(items.ids[i] for i in h) for user_id, h in zip(user_ids, histories)]
    (root / "users.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _user_ids(n: int) -> list[str]:
    width = max(6, len(str(n)))
    return [f"u{u + 1:0{width}d}" for u in range(n)]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _key(col: int) -> tuple[str, str]:
    return ATTRIBUTE_KEYS[col]


def _write_meta(
    root: Path,
    params: dict[str, Any],
    items: _Items,
    histories: list[list[int]],
    tastes: list[_Taste],
    codec: str,
) -> None:
    items_meta: dict[str, Any] = {}
    for k, item_id in enumerate(items.ids):
        entry: dict[str, Any] = {m: {a: items.value(k, m, a) for a in ATTRIBUTES[m]} for m in MODALITY_ORDER}
        entry["title"] = items.titles[k]
        entry["present"] = [m for j, m in enumerate(MODALITY_ORDER) if items.present[k, j]]
        entry["popularity"] = round(float(items.popularity[k]), 4)
        items_meta[item_id] = entry
    _write_json(root / "items_meta.json", items_meta)

    users_meta: dict[str, Any] = {}
    for user_id, t in zip(_user_ids(len(tastes)), tastes):
        slots = []
        for col, value, weight in t.slots:
            m, a = _key(col)
            slots.append(
                {"modality": m, "attribute": a, "value": ATTRIBUTES[m][a][value], "weight": round(weight, 4)}
            )
        dm, da = _key(t.slots[t.drift_slot][0])
        em, ea = _key(t.echo)
        users_meta[user_id] = {
            "taste": slots,
            "drift": {"step": t.drift_step, "slot": t.drift_slot, "to": ATTRIBUTES[dm][da][t.drift_value]},
            "echo": {"modality": em, "attribute": ea},
        }
    _write_json(root / "users_meta.json", users_meta)

    lengths = [len(h) for h in histories]
    counts = {
        "items": len(items.ids),
        "users": len(histories),
        "interactions": int(sum(lengths)),
        "min_history": int(min(lengths)),
        "max_history": int(max(lengths)),
        "items_with": {m: int(items.present[:, j].sum()) for j, m in enumerate(MODALITY_ORDER)},
    }
    media = {
        "image": {"format": "png", "size": [IMAGE_SIZE, IMAGE_SIZE]},
        "video": {
            "format": "mp4",
            "codec": codec,
            "frames": VIDEO_FRAMES,
            "fps": VIDEO_FPS,
            "size": [VIDEO_SIZE] * 2,
        },
        "audio": {"format": "wav", "sample_rate": AUDIO_RATE, "seconds": AUDIO_SECONDS, "channels": 1},
    }
    model = {
        "taste_weight": TASTE_WEIGHT,
        "weak_slot_factor": WEAK_SLOT_FACTOR,
        "echo_weight": ECHO_WEIGHT,
        "popularity_scale": POPULARITY_SCALE,
        "drift_range": list(DRIFT_RANGE),
        "text_missing_rate": 0.0,
    }
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": True,
        "params": params,
        "counts": counts,
        "attributes": {m: {a: list(v) for a, v in ATTRIBUTES[m].items()} for m in MODALITY_ORDER},
        "media": media,
        "model": model,
    }
    (root / "README.md").write_text(_readme(params, counts, codec), encoding="utf-8")
    _write_json(root / "meta.json", meta)  # last: its presence marks the folder complete


def _readme(params: dict[str, Any], counts: dict[str, Any], codec: str) -> str:
    attrs = "\n".join(
        f"- {m}: " + "; ".join(f"{a} ({', '.join(v)})" for a, v in ATTRIBUTES[m].items())
        for m in MODALITY_ORDER
    )
    dominant = params["dominant"] or "none (tastes span 2-3 modalities)"
    with_ = ", ".join(f"{m} {n}" for m, n in counts["items_with"].items())
    return f"""# Synthetic multimodal sequential-recommendation dataset

Generated by `{GENERATOR}` version {GENERATOR_VERSION} (crossan). Not real data.

- size: {params["size"]}; seed: {params["seed"]}; missing_rate: {params["missing_rate"]}; dominant: {dominant}
- {counts["items"]} items, {counts["users"]} users, {counts["interactions"]} interactions
  (histories of {counts["min_history"]}-{counts["max_history"]} items)
- items with each modality: {with_}

## Files

- `items.tsv`: header `item_id, title, image, video, audio` (tab-separated); media paths relative to this
  folder; an empty cell means the item lacks that modality (and no file exists). Text is always present.
- `users.tsv`: `user_id<TAB>item item ...`, items in time order, no repeats, no header.
- `images/*.png` ({IMAGE_SIZE}x{IMAGE_SIZE} RGB), `videos/*.mp4` ({codec}, {VIDEO_FRAMES} frames,
  {VIDEO_SIZE}x{VIDEO_SIZE}, {VIDEO_FPS} fps), `audio/*.wav` ({AUDIO_RATE} Hz mono, {AUDIO_SECONDS} s, 16-bit).
- `items_meta.json`: each item's latent attributes, present modalities, popularity term.
- `users_meta.json`: each user's taste (slots with weights), drift and echo attribute.
- `meta.json`: parameters, counts, vocabularies, media settings and model constants.

## Latent attributes (independent per item)

{attrs}

## How histories were drawn

Each user has 2-3 taste slots (a preferred value of one attribute each, from different modalities; with
`dominant` set: both attributes of that modality plus one weak slot elsewhere). Each next item is drawn,
without repeats, with probability proportional to exp(matched slot weights + echo + popularity), where echo
({ECHO_WEIGHT}) rewards agreeing with the previous item on one per-user attribute and popularity is a
per-item N(0, {POPULARITY_SCALE}^2) term. At {int(DRIFT_RANGE[0] * 100)}-{int(DRIFT_RANGE[1] * 100)}% of a history
one slot switches to a new value. Slot weight: {TASTE_WEIGHT} x U(0.75, 1.25).
"""
