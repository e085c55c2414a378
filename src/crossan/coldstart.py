"""Cold start: items that were not in the training catalogue, embedded by a trained run and stored in it.

:func:`embed_items` (``crossan embed-items``) runs the run's frozen encoders and trained item tower over a
catalogue of new items and stores the result in the run folder::

    RUN_DIR/extra_items/embeddings.safetensors   float32 [E, d] ("embeddings"); metadata: ids, generation,
                                                 the items' records (what readers use)
    RUN_DIR/extra_items/items.json               a readable copy of the records (id, title, media paths)

Both record ``weights_sha256``: the SHA-256 of the ``best.safetensors`` bytes that embedded the items (read
once, :func:`crossan.runs.read_weights`); readers serve them only beside those very weights
(:func:`check_extra_weights`).

:func:`crossan.serve.load_recommender` appends them to the item table (rows N+1 … N+E), so they are
candidates and may appear in histories. A tower embeds new content in one of two ways:

* a content tower (:class:`~crossan.towers.content.ContentTower`: frozen, IISAN, CROSSAN, …) reads its
  :class:`~crossan.cache.features.FeatureSource`; for new items the source is swapped for
  :class:`~crossan.cache.features.LiveFeatures` over the new catalogue with the run's encoders. When the
  run read the layer-state cache (``cached=true``), each modality's encoder runs at the compute dtype its
  cache was built with (the manifest's ``build.compute_dtype``; the run's ``precision`` where an older
  manifest does not record it), and the live states are rounded through float16 first, as the cache stores
  them, so that a new item with a training item's content gets that item's embedding;
* any other tower may implement ``embed_content(records: list[ItemRecord], catalogue: Catalogue,
  on_corrupt: str) -> Tensor [E, dim]`` (e.g. end-to-end towers that run their own backbone on raw media);
  it is called with the new items in chunks of ``encoders.batch_size`` and the run's ``cache.on_corrupt``.

The new catalogue is read with the run's ``data`` settings (``data.max_text_chars`` cuts titles as the
training titles were cut; media may lie in the run's ``data.media_roots``, relative ones taken from the
training dataset's root), except that a malformed row is always an error.

A method without content (its row in :mod:`crossan.methods` neither reads the cache nor runs a backbone:
the ID tower) is refused with a clear error. The embeddings file is the one readers trust: it carries the
records in its metadata and is written atomically, last, so a command that fails at any point leaves the stored
items as they were; items.json is a readable copy (for files written before crossan 0.1.5, which keep the
records there only, both files carry one generation id and a torn pair is refused).
Concurrent ``embed-items`` on one run embed side by side and store one at a time (:data:`EXTRA_LOCK`), each
merging its items with those stored when it takes the lock, so none is lost.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

import crossan
from crossan.cache.lock import build_lock
from crossan.config import Config, DataConfig
from crossan.errors import ServeError, UnreadableItemsError
from crossan.methods import get_method
from crossan.runs import RESULTS, WEIGHTS, check_run_folder, load_run, read_weights, warn_if_unfinished
from crossan.utils import atomic_save_safetensors, atomic_write_json, resolve_device, safetensors_metadata

EXTRA_DIR = "extra_items"
EXTRA_EMBEDDINGS = "embeddings.safetensors"
EXTRA_ITEMS = "items.json"
EXTRA_LOCK = ".extra_items.lock"
"""In the run folder: the lock that makes concurrent ``embed-items`` store their items one at a time."""


# --------------------------------------------------------------------------------------------- stored items
@dataclass
class ExtraItems:
    """Cold-start items stored in a run folder (see the module docstring)."""

    ids: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    weights_sha256: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def check_extra_weights(run_dir: Path, extra: ExtraItems, sha: str) -> None:
    """Refuse (:class:`ServeError`, naming both files) stored extra items that were embedded with other weights
    than the ``best.safetensors`` whose bytes have SHA-256 ``sha`` (the bytes the caller read and uses): their
    rows would be scored beside another checkpoint's. Nothing to check without extra items."""
    if not len(extra) or extra.weights_sha256 == sha:
        return
    folder = run_dir / EXTRA_DIR
    why = ("the run has no results.json: it still trains (or stopped), and a new best epoch replaced its weights"
           if not (run_dir / RESULTS).is_file() else "the run changed since: retrained or resumed")
    recorded = extra.weights_sha256[:12] or "none recorded"
    raise ServeError(f"{folder / EXTRA_EMBEDDINGS}: the extra items were embedded with other weights (sha256 "
                     f"{recorded}) than {run_dir / WEIGHTS} holds now ({sha[:12]}; {why}); remove {folder} and "
                     "embed them again (crossan embed-items)")


def _stored_items(run_dir: Path, sha: str) -> ExtraItems:
    """The run's stored extra items, refused when they were embedded with other weights than ``sha``'s."""
    existing = read_extra_items(run_dir)
    check_extra_weights(run_dir, existing, sha)
    return existing


def read_extra_items(run_dir: str | Path) -> ExtraItems:
    """The run's stored extra items (empty when it has none); checks the two files agree.

    No embeddings file means no stored items, even beside an items.json: the embeddings file is the commit
    point (written last), so a lone items.json is what a first ``embed-items`` that failed between its two
    writes leaves (crossan before 0.1.5 wrote the embeddings first). The embeddings file is read once, its
    records and its tensor from the same bytes: an ``embed-items`` that stores its items meanwhile (an atomic
    rename) cannot pair one generation's ids with another's rows. Damaged files are refused with the advice
    to remove the folder: ``embed-items`` reads the stored items too, so it cannot mend them."""
    folder = Path(run_dir) / EXTRA_DIR
    emb_path, items_path = folder / EXTRA_EMBEDDINGS, folder / EXTRA_ITEMS
    if not emb_path.is_file():
        return ExtraItems()
    again = f"remove {folder} and embed the items again (crossan embed-items)"
    try:
        try:
            raw = emb_path.read_bytes()
        except FileNotFoundError:  # removed since is_file() (the folder was removed to embed again): none stored
            return ExtraItems()
        meta = safetensors_metadata(raw)
        tensors = load(raw)
        # the records travel in the embeddings' own metadata (one file, one atomic write: the commit point);
        # items.json is a readable copy, and the authority only for pairs written before crossan 0.1.5
        info = json.loads(meta["items"] if "items" in meta else items_path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001
        raise ServeError(f"{folder}: cannot read the extra items ({e}); {again}") from None
    ids = json.loads(meta.get("item_ids", "[]"))
    records = info.get("items", [])
    if (meta.get("generation") != info.get("generation") or ids != [r.get("item_id") for r in records]
            or "embeddings" not in tensors or tensors["embeddings"].shape[0] != len(ids)):
        raise ServeError(f"{folder}: {EXTRA_EMBEDDINGS} and {EXTRA_ITEMS} do not match (interrupted write?); "
                         f"{again}")
    return ExtraItems(ids, records, tensors["embeddings"].float(), info.get("weights_sha256", ""))


def _write_extra_items(run_dir: Path, extra: ExtraItems, cfg: Config) -> None:
    folder = run_dir / EXTRA_DIR
    folder.mkdir(exist_ok=True)
    generation = uuid.uuid4().hex
    info = {
        "crossan_version": crossan.__version__,
        "generation": generation,
        "method": cfg.method,
        "modalities": cfg.modalities,
        "dim": int(extra.embeddings.shape[1]),
        "weights_sha256": extra.weights_sha256,
        "items": extra.records,
    }
    # the readable copy first, then the one file readers trust (records in its metadata): a command that fails
    # between the two leaves the stored items as they were (readers take the embeddings file's records)
    atomic_write_json(folder / EXTRA_ITEMS, info)
    atomic_save_safetensors({"embeddings": extra.embeddings.detach().float().contiguous().cpu()},
                            folder / EXTRA_EMBEDDINGS,
                            metadata={"crossan_version": crossan.__version__, "generation": generation,
                                      "item_ids": json.dumps(extra.ids), "items": json.dumps(info)})


# --------------------------------------------------------------------------------------------- embedding
def read_new_catalogue(path: str | Path, data: DataConfig | None = None,
                       training_root: str | Path | None = None) -> Any:
    """The catalogue of new items: a folder holding ``items.tsv``, or the ``items.tsv`` file itself (media
    paths relative to its folder; see :func:`crossan.data.readers.read_items_tsv`).

    ``data``: the run's data settings, so that titles are cut at its ``max_text_chars`` and media may lie in
    its ``media_roots`` (default: :class:`~crossan.config.DataConfig`'s). A relative media root is taken
    relative to ``training_root`` (the training dataset's root, where the run's config meant it) when
    given. A malformed row is an error naming file and line, whatever ``data.on_bad_rows`` says: no new
    item is dropped silently.
    """
    from crossan.data.readers import DROP_HINT, DataError, _Problems, read_items_tsv

    settings = dataclasses.replace(data if data is not None else DataConfig(), on_bad_rows="error")
    if training_root is not None:
        settings.media_roots = [str(Path(training_root) / Path(r).expanduser()) for r in settings.media_roots]
    p = Path(path).expanduser()
    items_tsv = p / "items.tsv" if p.is_dir() else p
    if not items_tsv.exists():
        raise DataError(f"{items_tsv}: file not found (expected a folder with items.tsv, or an items.tsv file)")
    try:
        catalogue = read_items_tsv(items_tsv, _Problems(settings), spaces_ok=True)
    except DataError as e:  # the readers' hint (data.on_bad_rows=drop) does not apply to new items
        raise DataError(str(e).replace(DROP_HINT, " (a new item's row is never dropped: correct it)")) from None
    if len(catalogue) == 0:
        raise DataError(f"{items_tsv}: no items")
    from crossan.data.textscan import SPACES

    unnamable = [i for i in catalogue.ids() if any(c in SPACES and c != " " for c in i)]
    if unnamable:  # a --users file separates items by ASCII whitespace, or by tabs where ids hold spaces
        raise DataError(f"{items_tsv}: item ids {unnamable[:5]} contain a tab, line break or other ASCII control "
                        "whitespace; a --users file of crossan recommend separates a history's items by such "
                        "characters, so such an item could never be named in one: rename it")
    return catalogue



class CacheRoundedFeatures:
    """A feature source whose states are another source's rounded through float16, as the layer-state cache
    stores them (:mod:`crossan.cache`): a run trained on the cache then embeds a new item exactly as it
    embeds a training item with the same content (not merely within fp16 rounding). A state beyond
    float16's range (±65504) is refused, naming the items, as the cache builder refuses it."""

    def __init__(self, source: Any, item_ids: list[str]) -> None:
        self.source = source
        self.item_ids = item_ids
        self.modalities = list(source.modalities)
        self.dims = dict(source.dims)
        self.num_taps = int(source.num_taps)

    def gather(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for m, (states, present) in self.source.gather(items).items():
            rounded = states.to(torch.float16)
            finite = torch.isfinite(rounded).flatten(present.dim()).all(-1)
            if not bool(finite.all()):
                rows = sorted({int(r) for r in items[~finite.to(items.device)].reshape(-1).tolist()})
                named = [self.item_ids[r] for r in rows[:10]]
                raise ServeError(f"{m}: the encoder gives states beyond float16's range (±65504) or "
                                 f"non-finite for new items {named}; the run's cache stores float16 states, "
                                 "so these items cannot be embedded as its training items were")
            out[m] = (rounded.to(states.dtype), present)
        return out


class BuildPrecisionFeatures:
    """Live states of each modality computed at its own precision: ``sources[m]`` (one
    :class:`~crossan.cache.features.LiveFeatures` per modality) under ``precisions[m]`` (``bf16`` or
    ``fp32``), whatever autocast the caller runs in, as each modality's cache was built."""

    def __init__(self, sources: dict[str, Any], precisions: dict[str, str]) -> None:
        self.sources, self.precisions = sources, precisions
        self.modalities = list(sources)
        self.dims = {m: int(s.dims[m]) for m, s in sources.items()}
        self.num_taps = int(next(iter(sources.values())).num_taps)

    def gather(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from crossan.precision import autocast, full_precision

        out = {}
        for m, source in self.sources.items():
            kind = items.device if items.device.type in ("cpu", "cuda") else torch.device("cpu")
            context = autocast("bf16", kind) if self.precisions[m] == "bf16" else full_precision(kind)
            with context:
                out.update(source.gather(items))
        return out


def cache_build_precisions(cfg: Config, data: Any) -> dict[str, str]:
    """Per modality of a cached run, the ``precision`` (``bf16`` / ``fp32``) its cache's states were computed
    at, from the cache's manifest; modalities whose manifest does not record it (older crossan) are left out."""
    from crossan.cache.layout import modality_folder
    from crossan.cache.manifest import UNKNOWN, build_compute, read_manifest

    out = {}
    for m in cfg.modalities:
        dtype = build_compute(read_manifest(modality_folder(cfg, data, m)) or {})[0]
        if dtype != UNKNOWN:
            out[m] = "bf16" if dtype == "bfloat16" else "fp32"
    return out


def _embed_new(model: Any, cfg: Config, catalogue: Any, ids: list[str], device: torch.device,
               data: Any = None) -> torch.Tensor:
    """Embeddings [E, d] of catalogue items ``ids`` by the run's item tower (see the module docstring).
    ``data``: the run's dataset, where its cache's manifests are found (``cached=true``)."""
    from crossan.cache.features import LiveFeatures
    from crossan.precision import compute_dtype, full_precision
    from crossan.towers.content import ContentTower

    tower = model.tower
    if hasattr(tower, "embed_content"):
        records = [catalogue[i] for i in ids]
        step = max(1, cfg.encoders.batch_size)  # bounded memory: media are read and prepared chunk by chunk
        # the run's policy for corrupt media (a tower written for the older two-argument protocol gets none)
        takes_policy = "on_corrupt" in inspect.signature(tower.embed_content).parameters
        policy = {"on_corrupt": cfg.cache.on_corrupt} if takes_policy else {}
        try:
            with torch.no_grad(), full_precision(device):  # float32, as embed_all, inside a caller's autocast too
                return torch.cat([tower.embed_content(records[i:i + step], catalogue, **policy).float()
                                  for i in range(0, len(records), step)])
        except UnreadableItemsError as e:  # name the catalogue, as the other refusals do
            raise UnreadableItemsError(e.items, str(catalogue.source)) from None
    if not isinstance(tower, ContentTower):
        raise ServeError(f"method={cfg.method}: its item tower ({type(tower).__name__}) cannot embed new content: "
                         "it derives from no ContentTower (whose feature source is replaced by live encoders for "
                         "new items) and implements no embed_content (docs/serving.md, cold start)")
    from crossan.encoders.factory import build_encoders

    modalities = list(tower.modalities)
    old, tower_precision = tower.features, tower.precision
    if isinstance(old, LiveFeatures) and all(m in old.encoders for m in modalities):
        encoders = {m: old.encoders[m] for m in modalities}
    else:
        encoders = build_encoders(cfg, modalities, device)
    for m, e in encoders.items():  # the new source must give states the trained tower was built for
        if e.hidden_size != tower.dims[m] or e.num_taps != tower.num_taps:
            raise ServeError(f"the {m} encoder of {cfg.encoders.preset!r} now gives {e.num_taps} taps of width "
                             f"{e.hidden_size}; the run was trained on {tower.num_taps} of width {tower.dims[m]}")
    live: Any = LiveFeatures(encoders, catalogue, [""] + ids, batch_size=cfg.encoders.batch_size,
                             on_corrupt=cfg.cache.on_corrupt)
    sources = [live]  # what read the media: their corrupt files, per modality, are asked for below
    precision = tower.precision
    if cfg.cached:  # training read the float16 cache: give the tower the states it would have read there,
        # computed at the precision each modality's cache was built with (not necessarily the run's)
        built = cache_build_precisions(cfg, data) if data is not None else {}
        if built:
            sources = [LiveFeatures({m: encoders[m]}, catalogue, [""] + ids, batch_size=cfg.encoders.batch_size,
                                    on_corrupt=cfg.cache.on_corrupt) for m in modalities]
            live = BuildPrecisionFeatures(dict(zip(modalities, sources)),
                                          {m: built.get(m, "bf16" if compute_dtype(precision, device) is not None
                                                        else "fp32") for m in modalities})
            precision = "fp32"  # no outer autocast: each modality's own precision applies
        live = CacheRoundedFeatures(live, [""] + ids)
    rows = torch.arange(1, len(ids) + 1, device=device)
    object.__setattr__(tower, "features", live)
    object.__setattr__(tower, "precision", precision)
    try:
        with torch.no_grad(), full_precision(device):  # the frozen encoders' precision applies inside
            parts = [tower(chunk).float() for chunk in rows.split(cfg.eval.batch_size)]
    finally:
        object.__setattr__(tower, "features", old)
        object.__setattr__(tower, "precision", tower_precision)
    _refuse_unread(catalogue, ids, modalities, sources)
    return torch.cat(parts)


def _refuse_unread(catalogue: Any, ids: list[str], modalities: list[str], sources: list[Any]) -> None:
    """Refuse items whose every file of the run's modalities was corrupt (``cache.on_corrupt=missing`` counts
    them absent) and that have no title either: they would be embedded from nothing, a constant vector ranked
    as a candidate like any other."""
    corrupt: dict[str, set[str]] = {m: set() for m in modalities}
    for source in sources:
        for m, items in source.corrupt.items():
            corrupt.setdefault(m, set()).update(items)
    unread = [i for i in ids
              if all(not catalogue[i].has(m) or i in corrupt.get(m, ()) for m in modalities)]
    if unread:
        raise UnreadableItemsError(unread, str(catalogue.source))


def embed_items(run_dir: str | Path, new_catalogue: str | Path, device: str = "auto",
                data_path: str | None = None) -> list[str]:
    """Embed the items of ``new_catalogue`` with the run's encoders and item tower and store them as extra
    candidates of the run (added, or replaced by id). Returns the ids embedded.

    Refuses ID-only runs, ids that are training items of the run, and items with none of the run's
    modalities. Nothing is written unless every item was embedded.
    """
    run_dir = Path(run_dir)
    cfg = check_run_folder(run_dir)
    warn_if_unfinished(run_dir)
    if not get_method(cfg.method).has_content:
        raise ServeError(f"{run_dir}: method={cfg.method} learns one vector per training item and has no content "
                         "to embed a new item from; train a content method (frozen, iisan, crossan, …) for cold "
                         "start")
    read_new_catalogue(new_catalogue, cfg.data)  # a bad catalogue fails before the model is loaded
    # the weights read once: the items are embedded with these bytes and stamped with their digest (a run that
    # still trains may replace best.safetensors meanwhile; a second read could embed with one, stamp another)
    weights = read_weights(run_dir / WEIGHTS)
    sha = weights.sha256
    _stored_items(run_dir, sha)  # damaged or stale stored items fail before the model is loaded
    dev = str(resolve_device(device))
    cfg, data, model = load_run(run_dir, dev, data_path, cfg=cfg, weights=weights)
    del weights  # the model holds them now
    # read again with relative data.media_roots taken from the training dataset's root, as training read them
    catalogue = read_new_catalogue(new_catalogue, cfg.data, training_root=data.catalogue.root)
    ids = catalogue.ids()
    empty = [i for i in ids if not any(catalogue[i].has(m) for m in cfg.modalities)]
    if empty:
        raise ServeError(f"{catalogue.source}: items {empty[:10]} have none of the run's modalities "
                         f"({', '.join(cfg.modalities)}); there is nothing to embed them from")
    train_ids = set(data.item_ids[1:])
    clash = [i for i in ids if i in train_ids]
    if clash:
        raise ServeError(f"{catalogue.source}: item ids {clash[:10]}{' …' if len(clash) > 10 else ''} are training "
                         "items of the run; give new items new ids")
    emb = _embed_new(model, cfg, catalogue, ids, torch.device(dev), data).cpu()
    records = []
    for i in ids:
        r = catalogue[i]
        rec: dict[str, Any] = {"item_id": i, "title": r.text}
        for m in ("image", "video", "audio"):
            p = catalogue.path(r, m)
            rec[m] = None if p is None else str(p.resolve())
        rec["source"] = str(Path(catalogue.source).resolve()) if catalogue.source else ""
        records.append(rec)
    # merge with the items stored *now*, one embed-items at a time: another one may have stored its items
    # while this one embedded (read before, they were overwritten: the last writer's items alone survived)
    with build_lock(run_dir / EXTRA_LOCK, str(run_dir / EXTRA_DIR), "crossan embed-items process",
                    "storing its items"):
        existing = _stored_items(run_dir, sha)
        # replace by id in place, append the rest
        merged_ids = list(existing.ids)
        merged_records = list(existing.records)
        merged_emb = [existing.embeddings[j] for j in range(len(existing))] if len(existing) else []
        pos = {item: j for j, item in enumerate(merged_ids)}
        for j, i in enumerate(ids):
            if i in pos:
                merged_records[pos[i]], merged_emb[pos[i]] = records[j], emb[j]
            else:
                pos[i] = len(merged_ids)
                merged_ids.append(i)
                merged_records.append(records[j])
                merged_emb.append(emb[j])
        _write_extra_items(run_dir, ExtraItems(merged_ids, merged_records, torch.stack(merged_emb), sha), cfg)
    return ids
