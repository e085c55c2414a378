"""The synthetic dataset's tables (items.tsv, users.tsv), metadata (items_meta.json, users_meta.json,
meta.json) and README."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from crossan.data.synth.media import _media_path
from crossan.data.synth.vocab import (
    ATTRIBUTE_KEYS,
    ATTRIBUTES,
    AUDIO_RATE,
    AUDIO_SECONDS,
    DRIFT_RANGE,
    ECHO_WEIGHT,
    GENERATOR,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    MEDIA_MODALITIES,
    MODALITY_ORDER,
    POPULARITY_SCALE,
    TASTE_WEIGHT,
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_SIZE,
    WEAK_SLOT_FACTOR,
)
from crossan.data.synth.world import _Items, _Taste

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
    (root / "README.md").write_text(_readme(params, counts, codec), encoding="utf-8")
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "complete": True,
        "digest": dataset_digest(root),
        "params": params,
        "counts": counts,
        "attributes": {m: {a: list(v) for a, v in ATTRIBUTES[m].items()} for m in MODALITY_ORDER},
        "media": media,
        "model": model,
    }
    _write_json(root / "meta.json", meta)  # last: its presence marks the folder complete


def dataset_digest(root: Path) -> str:
    """``sha256:<hex>`` over the files of the dataset folder ``root``: each file's path relative to ``root``, a
    NUL and its bytes, in sorted path order; ``meta.json`` (which records the digest) and hidden files (the
    generator's in-progress marker) are left out. Two folders with the same digest hold the same bytes, so
    results from different machines can be checked to share their data (the generator is byte-deterministic,
    media included)."""
    h = hashlib.sha256()
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in names:
        if name != "meta.json" and not any(part.startswith(".") for part in name.split("/")):
            h.update(name.encode() + b"\0")
            h.update((root / name).read_bytes())
    return "sha256:" + h.hexdigest()


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
