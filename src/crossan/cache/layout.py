"""Where a layer-state cache lives and what its folders hold (see :mod:`crossan.cache` for the layout).

File names, the format version, the manifest fields compared against a run, and the folder of a run's
cache: ``cache.dir``, or ``$CROSSAN_CACHE_DIR`` (default ``~/.cache/crossan``) ``/<dataset>-<item
fingerprint>/<preset>[-<hash of the modality's encoder overrides>]/<modality>``. The item fingerprint
(:func:`item_key`) hashes the item ids in row order only: an edited title or media file keeps the folder,
and ``crossan cache`` re-encodes just the rows it changed (:mod:`crossan.cache.integrity`); another item
list (items added, removed or reordered) is another cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossan.data.catalogue import MODALITIES, ItemRecord, fingerprint_ids

if TYPE_CHECKING:
    from crossan.config import Config

FORMAT_VERSION = 3
"""2: ``sources.npy`` and ``manifest["checksums"]``; 3: ``item_fingerprint`` (and the default folder) hash
the item ids only, and ``sources.npy`` holds each row's title (text) or media path digest. Caches of an
older version no longer match (their rows were checked against another record) and are rebuilt."""
STATES = "states.npy"
PRESENT = "present.npy"
SOURCES = "sources.npy"
SOURCES_NEXT = "sources.next.npy"
"""A completed cache's new ``sources.npy`` while it is being recorded
(:func:`~crossan.cache.workarea.record_sources`)."""
MANIFEST = "manifest.json"
DONE = "done.npy"
CORRUPT = "corrupt.jsonl"
PLAN = "plan.json"
COMPLETE = "COMPLETE"

COMPARED_FIELDS: tuple[str, ...] = (
    "format_version",
    "dtype",
    "checkpoint",
    "weights_digest",
    "preprocessor_digest",
    "config_digest",
    "family",
    "model_type",
    "random_init",
    "num_layers",
    "hidden_size",
    "taps",
    "pooling",
    "preprocessing",
    "item_fingerprint",
    "num_items",
)
"""Manifest fields that must match the current configuration for a cache to be used (``weights_digest``,
``preprocessor_digest`` and ``config_digest`` only where the cache records them: caches built before they were
recorded are read as before). ``build`` (batch size, compute dtype, device type) is not among them: a cache
built at either precision is read by runs of any (see :func:`crossan.cache.manifest.build_settings`)."""


def item_records(data: Any) -> list[ItemRecord]:
    """Records of rows 1..N of ``data`` (``.item_ids`` with the padding row first, ``.catalogue``)."""
    return [data.catalogue[i] for i in data.item_ids[1:]]


def num_items(data: Any) -> int:
    return len(data.item_ids) - 1


def item_key(data: Any) -> str:
    """The cache's item identity: :func:`~crossan.data.catalogue.fingerprint_ids` of rows 1..N — the folder
    key and the manifest's compared ``item_fingerprint``. Titles and media paths are deliberately left out
    (unlike :func:`~crossan.data.catalogue.fingerprint_items`): they are tracked per row in ``sources.npy``,
    so changing one re-encodes that row's batch rather than every item in a new folder."""
    return fingerprint_ids(data.item_ids[1:])


def _changes_preset(cfg: Config, modality: str) -> bool:
    """Whether the run's encoder keys of ``modality`` give another effective encoder than the preset's (a key
    set to the preset's own value does not; naming a ``model`` puts the other keys at their defaults, which
    may). True where the preset cannot be resolved here: the keys given then name the folder, as before."""
    from crossan.config import resolve_model_spec
    from crossan.encoders.presets import merge_spec, preset_specs

    try:
        preset = preset_specs(cfg.encoders.preset, modality=modality)[modality]
    except Exception:  # noqa: BLE001 - e.g. a weights package missing: the run says so where it builds the encoder
        return True
    run = merge_spec(preset, getattr(cfg.encoders, modality))
    return (dataclasses.replace(run, model=resolve_model_spec(run.model))
            != dataclasses.replace(preset, model=resolve_model_spec(preset.model)))


def _encoder_overrides(cfg: Config) -> dict[str, Any]:
    """The encoder keys the run gives per modality, for the modalities where they change the preset's encoder
    (:func:`_changes_preset`; keys equal to the preset's build the preset's cache, in its folder)."""
    from crossan.config import resolve_model_spec

    out = {m: given for m in MODALITIES if (given := getattr(cfg.encoders, m).given()) and _changes_preset(cfg, m)}
    for given in out.values():  # a checkpoint folder spelt relative or absolute names one cache folder
        if isinstance(given.get("model"), str):
            given["model"] = resolve_model_spec(given["model"])
    return out


def preset_folder(cfg: Config, modality: str | None = None) -> str:
    """``<preset>``, or ``<preset>-<hash>`` when the run changes encoder settings of the preset: those of
    ``modality`` when given (so that changing one modality's encoder leaves the others' caches where they
    are), of all modalities otherwise."""
    overrides = _encoder_overrides(cfg)
    if modality is not None:
        overrides = {modality: overrides[modality]} if modality in overrides else {}
    if not overrides:
        return cfg.encoders.preset
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.encoders.preset}-{digest}"


def cache_base() -> Path:
    """``$CROSSAN_CACHE_DIR``, or ``~/.cache/crossan``: where the default cache folders are made."""
    return Path(os.environ.get("CROSSAN_CACHE_DIR") or Path.home() / ".cache" / "crossan").expanduser()


def default_cache_dir(cfg: Config, data: Any, modality: str | None = None) -> Path:
    """:func:`cache_base` ``/<dataset folder name>-<item_key>/<preset>`` (:func:`item_key`: the item ids in
    row order; :func:`preset_folder` of ``modality``)."""
    base = cache_base()
    source = Path(cfg.data.path).expanduser().resolve() if cfg.data.path else Path(data.catalogue.root)
    name = (source.stem if source.suffix else source.name) or "data"
    from crossan.utils import NAME_MAX

    room = NAME_MAX - 17  # "-" and the 16 hex digits of the item key
    if len(name.encode("utf-8", "surrogateescape")) > room:  # a long dataset folder's name is cut
        name = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return base / f"{name}-{item_key(data)}" / preset_folder(cfg, modality)


def cache_root(cfg: Config, data: Any, modality: str | None = None) -> Path:
    """The folder holding this run's ``<modality>/`` cache: ``cache.dir`` when set (one folder for every
    modality; the manifests tell encoder settings apart), else :func:`default_cache_dir`, where a modality
    whose encoder settings the run changes has a folder of its own."""
    return Path(cfg.cache.dir).expanduser() if cfg.cache.dir else default_cache_dir(cfg, data, modality)


def modality_folder(cfg: Config, data: Any, modality: str) -> Path:
    """``<cache root>/<modality>``: the completed cache of ``modality`` for this run."""
    return cache_root(cfg, data, modality) / modality


def _data_overrides(cfg: Config) -> list[str]:
    """``data.KEY=VALUE`` for each data setting of the run other than its default (the path aside): they
    decide which items there are (``min_interactions``, ``max_seq_len``: items outside every kept window are
    dropped), in what order, and their titles and media paths, so a cache built without them is another
    item list's, in another folder. Shell-quoted; lists written as YAML flow sequences."""
    from crossan.config import DataConfig

    default = DataConfig()
    out = []
    for f in dataclasses.fields(DataConfig):
        value = getattr(cfg.data, f.name)
        if f.name != "path" and value != getattr(default, f.name):
            shown = json.dumps(value) if isinstance(value, list) else value
            out.append(shlex.quote(f"data.{f.name}={shown}"))
    return out


def cache_command_line(cfg: Config, modalities: list[str]) -> str:
    """The ``crossan cache`` command that builds what this run needs: the run's dataset, with its data
    settings (:func:`_data_overrides`), preset, encoder overrides and batch size. Shell-quoted, so that it
    runs as printed where a path holds a space (``--data '/data/my shop'``)."""
    data = shlex.quote(cfg.data.path) if cfg.data.path else "<DATA>"
    parts = ["crossan cache", f"--data {data}", f"--modalities {','.join(modalities)}",
             f"--preset {cfg.encoders.preset}", *_data_overrides(cfg)]
    if cfg.cache.dir:
        parts.append(shlex.quote(f"cache.dir={cfg.cache.dir}"))
    if cfg.cache.on_corrupt != "error":
        parts.append(f"cache.on_corrupt={cfg.cache.on_corrupt}")
    for m, changed in _encoder_overrides(cfg).items():
        parts += [shlex.quote(f"encoders.{m}.{k}={v}") for k, v in changed.items()]
    if cfg.encoders.batch_size != 32:
        parts.append(f"encoders.batch_size={cfg.encoders.batch_size}")
    return " ".join(parts)


def as_built(cfg: Config, manifests: dict[str, dict[str, Any] | None], modalities: list[str]) -> Config:
    """``cfg`` with ``cache.on_corrupt=missing`` where one of ``modalities``' caches was built so (its manifest
    lists corrupt files marked missing): the update command printed for it then runs, where under ``error`` it
    stopped at the first of those files."""
    if cfg.cache.on_corrupt == "error" and any((manifests.get(m) or {}).get("num_corrupt") for m in modalities):
        return dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, on_corrupt="missing"))
    return cfg


def check_modalities(modalities: list[str]) -> list[str]:
    modalities = list(modalities)
    for m in modalities:
        if m not in MODALITIES:
            raise ValueError(f"unknown modality {m!r}; expected one of {list(MODALITIES)}")
    return modalities


def find_shards(shards_dir: Path) -> dict[int, dict[int, Path]]:
    """``{num_shards: {shard: folder}}`` of the shard folders (``I-of-N``) in ``shards_dir``."""
    found: dict[int, dict[int, Path]] = {}
    for p in shards_dir.iterdir() if shards_dir.is_dir() else []:
        i, sep, n = p.name.partition("-of-")
        if sep and i.isdigit() and n.isdigit():
            found.setdefault(int(n), {})[int(i)] = p
    return found


def stale_shards_hint(found: dict[int, dict[int, Path]]) -> str:
    """Each set of :func:`find_shards`' folders as one ``rm -r`` command per shard count."""
    return "; ".join(f"--num-shards {n}: rm -r " + " ".join(shlex.quote(str(f)) for _, f in sorted(folders.items()))
                     for n, folders in sorted(found.items()))
