"""Cache manifests: what produced a modality's states, and the comparison that refuses a stale cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from crossan.cache.layout import COMPARED_FIELDS, FORMAT_VERSION, MANIFEST, item_records, num_items
from crossan.config import EncoderSpec
from crossan.data.catalogue import fingerprint_items
from crossan.errors import CacheError
from crossan.utils import atomic_write_json


def versions() -> dict[str, str]:
    import torch
    import transformers

    import crossan

    return {"crossan": crossan.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (so that plans compare equal after a round trip)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def expected_manifest(modality: str, spec: EncoderSpec, data: Any) -> dict[str, Any]:
    """The compared manifest fields the current configuration would produce (loads no weights)."""
    from crossan.encoders.backbones import describe_backbone
    from crossan.encoders.base import describe_encoder

    info = describe_backbone(modality, spec)
    return jsonable({
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "dtype": "float16",
        **describe_encoder(modality, spec, info),
        "item_fingerprint": fingerprint_items(item_records(data)),
        "num_items": num_items(data),
    })


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_LABELS = {"item_fingerprint": "item fingerprint", "num_items": "number of items"}


def manifest_differences(modality: str, cached: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per compared field that differs: ``"<modality>: taps [..] in cache vs [..] in config"``."""
    diffs = []
    for name in COMPARED_FIELDS:
        a = _flatten({name: cached.get(name)}) if isinstance(cached.get(name), dict) else {name: cached.get(name)}
        b = _flatten({name: expected.get(name)}) if isinstance(expected.get(name), dict) else {name: expected.get(name)}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                where = "for the data" if name in ("item_fingerprint", "num_items") else "in config"
                label = _LABELS.get(key, key)
                diffs.append(f"{modality}: {label} {a.get(key)!r} in cache vs {b.get(key)!r} {where}")
    return diffs


def read_manifest(folder: Path, missing_ok: bool = True) -> dict[str, Any] | None:
    """``folder/manifest.json`` as a dict; None when absent. A file that is not a JSON object (bad JSON,
    ``[]``, not UTF-8, unreadable) is a :class:`CacheError` naming it."""
    path = folder / MANIFEST
    if not path.is_file():
        if missing_ok:
            return None
        raise CacheError(f"{path}: missing; rebuild the cache with `crossan cache`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CacheError(f"{path}: not a readable cache manifest ({e}); `crossan cache` builds the cache "
                         "again") from None
    missing = [k for k in ("shape", "num_items", *COMPARED_FIELDS[:1]) if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        what = f"a JSON {type(manifest).__name__}" if not isinstance(manifest, dict) else f"no {missing}"
        raise CacheError(f"{path}: not a cache manifest ({what}); `crossan cache` builds the cache again")
    return manifest


def write_json(path: Path, obj: Any) -> None:
    """A manifest or plan file (sorted keys), written atomically."""
    atomic_write_json(path, obj, sort_keys=True)
