"""Cache manifests: what produced a modality's states, and the comparison that refuses a stale cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from crossan.cache.layout import COMPARED_FIELDS, FORMAT_VERSION, MANIFEST, item_key, num_items
from crossan.config import EncoderSpec
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
        "item_fingerprint": item_key(data),  # the ids only: content changes are per row (sources.npy)
        "num_items": num_items(data),
    })


UNKNOWN = "unknown"
"""What :func:`build_compute` says of a manifest written before crossan recorded it."""


def build_settings(batch_size: int, precision: str, device: str) -> dict[str, Any]:
    """A manifest's ``build`` section: how the states were computed.

    ``compute_dtype`` is what ``precision`` resolves to on ``device`` (``bfloat16`` under autocast, or
    ``float32``) and ``device`` the device type (``cpu``, ``cuda`` …). They are part of a build's identity —
    a partial build is resumed, and shards are joined, only under the same ones, so that no cache mixes rows
    computed at two precisions — but not of the cache's: the states are stored in float16 whatever computed
    them, and a run of any precision reads them (``build`` is not among :data:`COMPARED_FIELDS`)."""
    import torch

    from crossan.precision import compute_dtype, dtype_name

    return {"batch_size": int(batch_size), "compute_dtype": dtype_name(compute_dtype(precision, device)),
            "device": torch.device(device).type}


def build_compute(manifest: dict[str, Any]) -> tuple[str, str]:
    """``(compute dtype, device type)`` a cache or shard was built with; :data:`UNKNOWN` where a manifest of
    an older crossan does not record them."""
    build = manifest.get("build")
    build = build if isinstance(build, dict) else {}
    return str(build.get("compute_dtype", UNKNOWN)), str(build.get("device", UNKNOWN))


def describe_compute(manifest: dict[str, Any]) -> str:
    """``"bfloat16 compute on cpu"``, or ``"compute dtype not recorded"`` for an older manifest."""
    dtype, device = build_compute(manifest)
    if dtype == UNKNOWN:
        return "compute dtype not recorded"
    return f"{dtype} compute on {device}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_LABELS = {"item_fingerprint": "item fingerprint", "num_items": "number of items",
           "weights_digest": "weights digest", "preprocessor_digest": "tokenizer/preprocessor files digest",
           "config_digest": "model config.json digest"}
_DIGESTS = ("weights_digest", "preprocessor_digest", "config_digest")
"""Compared only where the cache records them (caches built before crossan recorded them are read as before)."""


def manifest_differences(modality: str, cached: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per compared field that differs: ``"<modality>: taps [..] in cache vs [..] in config"``."""
    diffs = []
    for name in COMPARED_FIELDS:
        if name in _DIGESTS and name not in cached:  # written before crossan recorded it
            continue
        a = flatten({name: cached.get(name)}) if isinstance(cached.get(name), dict) else {name: cached.get(name)}
        b = flatten({name: expected.get(name)}) if isinstance(expected.get(name), dict) else {name: expected.get(name)}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                where = ("for the data" if name in ("item_fingerprint", "num_items") else
                         "for the weights on disk now" if name == "weights_digest" else
                         "for the files on disk now" if name in _DIGESTS else "in config")
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
