"""The synthetic world: items with latent attributes and popularity, and users whose drifting tastes generate
their histories (see :mod:`crossan.data.synth` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crossan.data.synth.vocab import (
    _STREAM_ITEMS,
    _STREAM_TEXT,
    _STREAM_USERS,
    _USER_CHUNK,
    ATTRIBUTE_KEYS,
    ATTRIBUTES,
    DRIFT_RANGE,
    ECHO_WEIGHT,
    MEDIA_MODALITIES,
    MODALITY_ORDER,
    POPULARITY_SCALE,
    STYLES,
    TASTE_WEIGHT,
    TOPICS,
    WEAK_SLOT_FACTOR,
    SizeSpec,
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


