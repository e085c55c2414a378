"""Serving a trained run: top-K recommendations for histories, cold-start items, and the CLI for both.

Python API::

    from crossan.serve import load_recommender

    rec = load_recommender("runs/x")                 # config + best weights; the item table is computed once
    rec.recommend(["i12", "i7", "i30"], k=10)        # [Recommendation(item_id, title, score), ...]
    rec.recommend_many([["i1", "i2"], ["i9"]], k=5)  # one matmul per batch of histories

Scoring is exactly the evaluator's (:mod:`crossan.evaluation`): the user vector is the SASRec output at the
last position of the history's last ``data.max_seq_len`` items (left-padded with the padding row 0), every
item is scored by the dot product with its row of the item table, the padding row is never a candidate and
the history's items are excluded (``exclude_history=True``, the evaluator's convention).

Cold start (:func:`embed_items`, ``crossan embed-items``): items that were not in the training catalogue
are embedded by the run's frozen encoders and trained item tower and stored in the run folder::

    RUN_DIR/extra_items/embeddings.safetensors   float32 [E, d] ("embeddings"); metadata: ids, generation
    RUN_DIR/extra_items/items.json               the items' records (id, title, media paths), generation

:func:`load_recommender` appends them to the item table (rows N+1 … N+E), so they are candidates and may
appear in histories. A tower embeds new content in one of two ways:

* a content tower (:class:`~crossan.towers.content.ContentTower`: frozen, IISAN, CROSSAN, …) reads its
  :class:`~crossan.cache.features.FeatureSource`; for new items the source is swapped for
  :class:`~crossan.cache.live.LiveFeatures` over the new catalogue with the run's encoders;
* any other tower may implement ``embed_content(records: list[ItemRecord], catalogue: Catalogue) ->
  Tensor [E, dim]`` (e.g. end-to-end towers that run their own backbone on raw media).

A tower with neither (the ID tower: it has no content to embed from) is refused with a clear error.

Every file is written atomically (temporary file + ``os.replace``); a failed command leaves the run folder
as it was.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import crossan
from crossan.config import Config, config_from_dict
from crossan.trainer import RunError
from crossan.utils import file_sha256

EXTRA_DIR = "extra_items"
EXTRA_EMBEDDINGS = "embeddings.safetensors"
EXTRA_ITEMS = "items.json"
REQUIRED_FILES = ("config.yaml", "best.safetensors")


class ServeError(RunError):
    """A run cannot serve as asked: bad history, unknown items, incompatible or incomplete run folder."""


class UnknownItemError(ServeError):
    """Item ids that are neither training items nor extra items of the run (``unknown`` lists them)."""

    def __init__(self, message: str, unknown: list[str]) -> None:
        super().__init__(message)
        self.unknown = unknown


class Recommendation(NamedTuple):
    item_id: str
    title: str
    score: float


# --------------------------------------------------------------------------------------------- run folders
def _parse_version(v: str) -> tuple[int, ...]:
    parts = str(v).split("+")[0].split(".")
    try:
        return tuple(int("".join(ch for ch in p if ch.isdigit()) or "x") for p in parts[:2])
    except ValueError:
        raise ValueError(f"unparsable version {v!r}") from None


def version_compatible(written: str, current: str = crossan.__version__) -> bool:
    """Whether a run written by crossan ``written`` can be read by ``current``: same major version, and for
    0.x releases the same minor version too (no stability promise before 1.0); never a newer release."""
    try:
        w, c = _parse_version(written), _parse_version(current)
    except ValueError:
        return False
    if len(w) < 2 or len(c) < 2 or w > c:
        return False
    return w[0] == c[0] and (c[0] > 0 or w[1] == c[1])


def check_run_folder(run_dir: str | Path) -> Config:
    """Check that ``run_dir`` is a complete run of a compatible crossan version; return its config.

    Raises :class:`ServeError` naming the missing file, the version found, or the config key crossan no
    longer knows. Reads only small files (config, results, the weights' header).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ServeError(f"{run_dir}: no such run folder")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise ServeError(f"{run_dir}: not a complete crossan run folder ({name} is missing)")
    versions: dict[str, str] = {}
    results = run_dir / "results.json"
    if results.is_file():
        try:
            res = json.loads(results.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(f"{results}: not valid JSON ({e})") from None
        if not isinstance(res, dict) or "crossan_version" not in res:
            raise ServeError(f"{results}: no crossan_version (written by an older crossan?); this is crossan "
                             f"{crossan.__version__}")
        versions[str(results)] = str(res["crossan_version"])
    weights = run_dir / "best.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ServeError(f"{weights}: not a readable safetensors file ({e})") from None
    if "crossan_version" in meta:
        versions[str(weights)] = meta["crossan_version"]
    if not versions:
        raise ServeError(f"{run_dir}: no crossan_version in results.json or best.safetensors; cannot tell which "
                         f"crossan wrote it (this is crossan {crossan.__version__})")
    for where, v in versions.items():
        if not version_compatible(v):
            raise ServeError(f"{where}: written by crossan {v}, which crossan {crossan.__version__} cannot read; "
                             f"use crossan {v} or retrain")
    written = next(iter(versions.values()))
    cfg_path = run_dir / "config.yaml"
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ServeError(f"{cfg_path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ServeError(f"{cfg_path}: expected a mapping of config keys, got {type(raw).__name__}")
    try:
        return config_from_dict(raw)
    except ValueError as e:
        raise ServeError(f"{cfg_path} (written by crossan {written}) cannot be read by crossan "
                         f"{crossan.__version__}: {e}") from None


def _resolve_device(device: str) -> str:
    from crossan.utils import resolve_device

    return str(resolve_device(device))


# --------------------------------------------------------------------------------------------- extra items
@dataclass
class ExtraItems:
    """Cold-start items stored in a run folder (see the module docstring)."""

    ids: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    weights_sha256: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def read_extra_items(run_dir: str | Path) -> ExtraItems:
    """The run's stored extra items (empty when it has none); checks the two files agree."""
    folder = Path(run_dir) / EXTRA_DIR
    emb_path, items_path = folder / EXTRA_EMBEDDINGS, folder / EXTRA_ITEMS
    if not emb_path.is_file() and not items_path.is_file():
        return ExtraItems()
    for p in (emb_path, items_path):
        if not p.is_file():
            raise ServeError(f"{folder}: {p.name} is missing (interrupted write?); rerun crossan embed-items")
    try:
        with safe_open(str(emb_path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(emb_path))
        info = json.loads(items_path.read_text())
    except Exception as e:  # noqa: BLE001
        raise ServeError(f"{folder}: cannot read the extra items ({e}); rerun crossan embed-items") from None
    ids = json.loads(meta.get("item_ids", "[]"))
    records = info.get("items", [])
    if (meta.get("generation") != info.get("generation") or ids != [r.get("item_id") for r in records]
            or "embeddings" not in tensors or tensors["embeddings"].shape[0] != len(ids)):
        raise ServeError(f"{folder}: {EXTRA_EMBEDDINGS} and {EXTRA_ITEMS} do not match (interrupted write?); "
                         "rerun crossan embed-items")
    return ExtraItems(ids, records, tensors["embeddings"].float(), info.get("weights_sha256", ""))


def _write_extra_items(run_dir: Path, extra: ExtraItems, cfg: Config) -> None:
    from crossan.utils import atomic_write_json

    folder = run_dir / EXTRA_DIR
    folder.mkdir(exist_ok=True)
    generation = uuid.uuid4().hex
    tmp = folder / f".{EXTRA_EMBEDDINGS}.{generation}.tmp"
    save_file({"embeddings": extra.embeddings.detach().float().contiguous().cpu()}, str(tmp),
              metadata={"crossan_version": crossan.__version__, "generation": generation,
                        "item_ids": json.dumps(extra.ids)})
    tmp.replace(folder / EXTRA_EMBEDDINGS)
    atomic_write_json(folder / EXTRA_ITEMS, {
        "crossan_version": crossan.__version__,
        "generation": generation,
        "method": cfg.method,
        "modalities": cfg.modalities,
        "dim": int(extra.embeddings.shape[1]),
        "weights_sha256": extra.weights_sha256,
        "items": extra.records,
    })


# --------------------------------------------------------------------------------------------- recommender
class TrainedRecommender:
    """A trained run ready to serve: item table computed once, batched top-K with history exclusion.

    Attributes:
        item_ids: row → item id; row 0 is padding (``""``), rows 1..N the training items, then the extra
            (cold-start) items.
        titles: row → title (the item's text).
        item_table: FloatTensor [N+1+E, d] on :attr:`device`; row 0 is zero.
        num_train_items: N.
        max_seq_len: how many of a history's last items the user encoder reads.
    """

    def __init__(self, run_dir: Path, cfg: Config, data: Any, model: Any, extra: ExtraItems,
                 device: torch.device) -> None:
        self.run_dir, self.cfg, self.data, self.model, self.device = run_dir, cfg, data, model, device
        self.max_seq_len = cfg.data.max_seq_len
        self.num_train_items = data.num_items
        model.eval()
        model.tower.reset_stats()
        with torch.no_grad():
            table = model.tower.embed_all(cfg.eval.batch_size)
        titles = [""] + [data.catalogue[i].text for i in data.item_ids[1:]]
        ids = list(data.item_ids)
        if len(extra):
            table = torch.cat([table, extra.embeddings.to(table.device, table.dtype)])
            ids += extra.ids
            titles += [r.get("title", "") for r in extra.records]
        from crossan.trainer import check_finite_table

        check_finite_table(table, ids, str(run_dir))  # a NaN row would otherwise be served as a top item
        self.item_table: torch.Tensor = table
        self.item_ids: list[str] = ids
        self.titles: list[str] = titles
        self.extra_ids: list[str] = list(extra.ids)
        self._row = {item: r for r, item in enumerate(ids) if r > 0}

    # ------------------------------------------------------------------ helpers
    @property
    def num_candidates(self) -> int:
        return len(self.item_ids) - 1

    def rows(self, history: Sequence[str], where: str = "history") -> list[int]:
        """Item rows of ``history``; :class:`UnknownItemError` names every unknown id."""
        if isinstance(history, str):
            raise ServeError(f"{where}: expected a list of item ids, got the string {history!r}")
        if len(history) == 0:
            raise ServeError(f"{where}: the history is empty; give at least one item id")
        unknown = list(dict.fromkeys(str(i) for i in history if str(i) not in self._row))
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                                else "")
            raise UnknownItemError(f"{where}: unknown item id{'s' if len(unknown) > 1 else ''} {shown} (not among the "
                                   f"run's {self.num_train_items} training items or {len(self.extra_ids)} extra "
                                   "items)", unknown)
        return [self._row[str(i)] for i in history]

    def _windows(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input windows [B, L] (last L rows, left-padded) and full histories [B, H] (0-padded) for masking."""
        L = self.max_seq_len
        H = max(len(r) for r in rows)
        inputs = torch.zeros(len(rows), L, dtype=torch.long)
        hist = torch.zeros(len(rows), H, dtype=torch.long)
        for b, r in enumerate(rows):
            last = r[-L:]
            inputs[b, L - len(last):] = torch.as_tensor(last)
            hist[b, H - len(r):] = torch.as_tensor(r)
        return inputs.to(self.device), hist.to(self.device)

    @torch.no_grad()
    def _scores_rows(self, rows: list[list[int]], exclude_history: bool) -> torch.Tensor:
        inputs, hist = self._windows(rows)
        users = self.model.user_vectors(inputs, self.item_table)
        scores = users @ self.item_table.T  # [B, rows]
        scores[:, 0] = -torch.inf
        if exclude_history:
            scores.scatter_(1, hist, -torch.inf)  # padding 0 in hist hits column 0, already excluded
        return scores

    # ------------------------------------------------------------------ public
    def user_vectors(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """User vectors [B, d] of ``histories`` (lists of item ids)."""
        rows = [self.rows(h, f"history {b}") for b, h in enumerate(histories)]
        inputs, _ = self._windows(rows)
        with torch.no_grad():
            return self.model.user_vectors(inputs, self.item_table)

    def scores(self, histories: Sequence[Sequence[str]], exclude_history: bool = True) -> torch.Tensor:
        """Scores [B, N+1+E] of every row for each history; excluded rows (padding, history) are ``-inf``."""
        rows = [self.rows(h, f"history {b}") for b, h in enumerate(histories)]
        return self._scores_rows(rows, exclude_history)

    def recommend(self, history: Sequence[str], k: int = 10, exclude_history: bool = True) -> list[Recommendation]:
        """The top ``k`` items for one history (item ids, oldest first), best first."""
        self.rows(history, "history")  # errors name "history", not "history 0"
        return self.recommend_many([history], k, exclude_history)[0]

    def recommend_many(self, histories: Sequence[Sequence[str]] | Mapping[str, Sequence[str]], k: int = 10,
                       exclude_history: bool = True, batch_size: int | None = None
                       ) -> list[list[Recommendation]] | dict[str, list[Recommendation]]:
        """Top ``k`` for many histories: a list (or a mapping user → history, answered as a dict).

        Histories are scored in batches of ``batch_size`` (default ``eval.batch_size``): one matmul per batch
        against the whole table, history exclusion by scatter, ``torch.topk``; no loop over candidates.
        """
        if k < 1:
            raise ServeError(f"k must be at least 1, got {k}")
        keys = list(histories) if isinstance(histories, Mapping) else None
        seqs = [histories[u] for u in keys] if keys is not None else list(histories)
        names = [f"user {u!r}" for u in keys] if keys is not None else [f"history {b}" for b in range(len(seqs))]
        rows = [self.rows(h, names[b]) for b, h in enumerate(seqs)]  # all validated before any scoring
        bs = batch_size or self.cfg.eval.batch_size
        out: list[list[Recommendation]] = []
        kk = min(k, self.num_candidates)
        for start in range(0, len(rows), bs):
            scores = self._scores_rows(rows[start:start + bs], exclude_history)
            top_s, top_i = torch.topk(scores, kk, dim=1)
            for s_row, i_row in zip(top_s.cpu().tolist(), top_i.cpu().tolist()):
                out.append([Recommendation(self.item_ids[i], self.titles[i], float(s))
                            for s, i in zip(s_row, i_row) if s != float("-inf")])
        return dict(zip(keys, out)) if keys is not None else out


def load_recommender(run_dir: str | Path, device: str = "auto", data_path: str | None = None,
                     include_extra: bool = True) -> TrainedRecommender:
    """Load a run folder for serving (config, training data, best weights, extra items).

    ``data_path`` points at the training dataset when it moved since training (the item ids and titles, and
    for content methods the layer-state cache, come from it). ``device="auto"``: CUDA when available.
    """
    from crossan.trainer import load_run

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    dev = _resolve_device(device)
    extra = read_extra_items(run_dir) if include_extra else ExtraItems()
    if len(extra):
        sha = file_sha256(run_dir / "best.safetensors")
        if extra.weights_sha256 != sha:
            raise ServeError(f"{run_dir / EXTRA_DIR}: the extra items were embedded with other weights than "
                             "best.safetensors (the run changed since); rerun crossan embed-items")
    cfg, data, model = load_run(run_dir, dev, data_path)
    if len(extra):
        clash = [i for i in extra.ids if i in set(data.item_ids)]
        if clash:
            raise ServeError(f"{run_dir / EXTRA_DIR}: extra items {clash[:10]} are also training items of "
                             f"{cfg.data.path}")
        if extra.embeddings.shape[1] != model.tower.dim:
            raise ServeError(f"{run_dir / EXTRA_DIR}: embeddings of width {extra.embeddings.shape[1]}, the item "
                             f"tower's is {model.tower.dim}")
    return TrainedRecommender(run_dir, cfg, data, model, extra, torch.device(dev))


# --------------------------------------------------------------------------------------------- cold start
def read_new_catalogue(path: str | Path) -> Any:
    """The catalogue of new items: a folder holding ``items.tsv``, or the ``items.tsv`` file itself (media
    paths relative to its folder; see :func:`crossan.data.readers.read_items_tsv`)."""
    from crossan.config import DataConfig
    from crossan.data.readers import DataError, _Problems, read_items_tsv

    p = Path(path).expanduser()
    items_tsv = p / "items.tsv" if p.is_dir() else p
    if not items_tsv.exists():
        raise DataError(f"{items_tsv}: file not found (expected a folder with items.tsv, or an items.tsv file)")
    catalogue = read_items_tsv(items_tsv, _Problems(DataConfig()))
    if len(catalogue) == 0:
        raise DataError(f"{items_tsv}: no items")
    return catalogue


def _embed_new(model: Any, cfg: Config, catalogue: Any, ids: list[str], device: torch.device) -> torch.Tensor:
    """Embeddings [E, d] of catalogue items ``ids`` by the run's item tower (see the module docstring)."""
    from crossan.cache.live import LiveFeatures
    from crossan.towers.content import ContentTower

    tower = model.tower
    if hasattr(tower, "embed_content"):
        with torch.no_grad():
            return tower.embed_content([catalogue[i] for i in ids], catalogue).float()
    if not isinstance(tower, ContentTower):
        raise ServeError(f"method={cfg.method}: its item tower ({type(tower).__name__}) cannot embed new content "
                         "(it neither reads a feature source nor implements embed_content)")
    from crossan.encoders import build_encoder, resolve_specs

    modalities = list(tower.modalities)
    old = tower.features
    if isinstance(old, LiveFeatures) and all(m in old.encoders for m in modalities):
        encoders = {m: old.encoders[m] for m in modalities}
    else:
        specs = resolve_specs(cfg, modalities)
        encoders = {m: build_encoder(m, specs[m], device=str(device)) for m in modalities}
    for m, e in encoders.items():  # the new source must give states the trained tower was built for
        if e.hidden_size != tower.dims[m] or e.num_taps != tower.num_taps:
            raise ServeError(f"the {m} encoder of {cfg.encoders.preset!r} now gives {e.num_taps} taps of width "
                             f"{e.hidden_size}; the run was trained on {tower.num_taps} of width {tower.dims[m]}")
    live = LiveFeatures(encoders, catalogue, [""] + ids, batch_size=cfg.encoders.batch_size,
                        on_corrupt=cfg.cache.on_corrupt)
    rows = torch.arange(1, len(ids) + 1, device=device)
    object.__setattr__(tower, "features", live)
    try:
        with torch.no_grad():
            parts = [tower(chunk).float() for chunk in rows.split(cfg.eval.batch_size)]
    finally:
        object.__setattr__(tower, "features", old)
    return torch.cat(parts)


def embed_items(run_dir: str | Path, new_catalogue: str | Path, device: str = "auto",
                data_path: str | None = None) -> list[str]:
    """Embed the items of ``new_catalogue`` with the run's encoders and item tower and store them as extra
    candidates of the run (added, or replaced by id). Returns the ids embedded.

    Refuses ID-only runs, ids that are training items of the run, and items with none of the run's
    modalities. Nothing is written unless every item was embedded.
    """
    from crossan.trainer import load_run

    run_dir = Path(run_dir)
    cfg = check_run_folder(run_dir)
    if cfg.method == "id":
        raise ServeError(f"{run_dir}: method=id learns one vector per training item and has no content to embed "
                         "a new item from; train a content method (frozen, iisan, crossan, …) for cold start")
    catalogue = read_new_catalogue(new_catalogue)
    ids = catalogue.ids()
    empty = [i for i in ids if not any(catalogue[i].has(m) for m in cfg.modalities)]
    if empty:
        raise ServeError(f"{catalogue.source}: items {empty[:10]} have none of the run's modalities "
                         f"({', '.join(cfg.modalities)}); there is nothing to embed them from")
    existing = read_extra_items(run_dir)
    sha = file_sha256(run_dir / "best.safetensors")
    if len(existing) and existing.weights_sha256 != sha:
        raise ServeError(f"{run_dir / EXTRA_DIR}: the stored extra items were embedded with other weights than "
                         f"best.safetensors; remove {run_dir / EXTRA_DIR} and embed them again")
    dev = _resolve_device(device)
    cfg, data, model = load_run(run_dir, dev, data_path)
    train_ids = set(data.item_ids[1:])
    clash = [i for i in ids if i in train_ids]
    if clash:
        raise ServeError(f"{catalogue.source}: item ids {clash[:10]}{' …' if len(clash) > 10 else ''} are training "
                         "items of the run; give new items new ids")
    emb = _embed_new(model, cfg, catalogue, ids, torch.device(dev)).cpu()
    records = []
    for i in ids:
        r = catalogue[i]
        rec: dict[str, Any] = {"item_id": i, "title": r.text}
        for m in ("image", "video", "audio"):
            p = catalogue.path(r, m)
            rec[m] = None if p is None else str(p.resolve())
        rec["source"] = str(Path(catalogue.source).resolve()) if catalogue.source else ""
        records.append(rec)
    # merge: replace by id in place, append the rest
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


# --------------------------------------------------------------------------------------------- CLI
def read_users_file(path: str | Path) -> list[tuple[str, list[str], int]]:
    """``user TAB item item …`` lines (the IISAN users.tsv layout) → (user, items, line number)."""
    from crossan.data.readers import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        user, sep, rest = line.partition("\t")
        user = user.strip()
        if not sep or not user:
            raise DataError(f"{path}:{lineno}: expected 'user TAB item item …'")
        if user in seen:
            raise DataError(f"{path}:{lineno}: user {user!r} appears again (first on line {seen[user]})")
        seen[user] = lineno
        items = rest.split()
        if not items:
            raise ServeError(f"{path}:{lineno}: user {user!r} has an empty history")
        out.append((user, items, lineno))
    if not out:
        raise DataError(f"{path}: no users")
    return out


def cmd_recommend(args: Any) -> int:
    from crossan.utils import atomic_write_text

    if (args.history is None) == (args.users is None):
        raise ServeError("give either --history ITEM [ITEM …] or --users FILE")
    if args.k < 1:
        raise ServeError(f"--k must be at least 1, got {args.k}")
    if args.users is not None and not args.out:
        raise ServeError("--users needs --out FILE (the CSV of recommendations)")
    rec = load_recommender(args.run_dir, device=args.device, data_path=args.run_data)
    exclude = not args.include_history
    if args.history is not None:
        items = rec.recommend(args.history, k=args.k, exclude_history=exclude)
        w = max([len("item_id")] + [len(r.item_id) for r in items])
        print(f"{'rank':>4}  {'item_id':<{w}}  {'score':>10}  title")
        for n, r in enumerate(items, 1):
            print(f"{n:>4}  {r.item_id:<{w}}  {r.score:>10.4f}  {r.title}")
        return 0
    users = read_users_file(args.users)
    for user, items, lineno in users:  # name file, line and user before scoring anything
        rec.rows(items, f"{args.users}:{lineno} (user {user!r})")
    results = rec.recommend_many([h for _, h, _ in users], k=args.k, exclude_history=exclude)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["user", "rank", "item_id", "score", "title"])
    for (user, _, _), items in zip(users, results):
        for n, r in enumerate(items, 1):
            writer.writerow([user, n, r.item_id, f"{r.score:.6g}", r.title])
    atomic_write_text(args.out, buf.getvalue())
    print(f"recommendations for {len(users)} users written to {args.out}")
    return 0


def cmd_embed_items(args: Any) -> int:
    ids = embed_items(args.run_dir, args.data, device=args.device, data_path=args.run_data)
    total = len(read_extra_items(args.run_dir))
    print(f"embedded {len(ids)} new items into {Path(args.run_dir) / EXTRA_DIR} ({total} extra items in all)")
    return 0


def cmd_export(args: Any) -> int:
    from crossan.export import export_run

    out = export_run(args.run_dir, args.out, device=args.device, data_path=args.run_data,
                     include_extra=not args.no_extra, force=args.force)
    print(f"exported to {out}")
    return 0


def register(sub: Any, data_sub: Any) -> None:
    """Add ``recommend``, ``embed-items`` and ``export`` to the ``crossan`` command (``cli._EXTRA_COMMANDS``)."""

    def common(p: Any) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (config.yaml, best.safetensors)")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, …")
        p.add_argument("--run-data", metavar="PATH",
                       help="the run's training dataset, when it moved since training (default: data.path of "
                            "its config.yaml)")

    p = sub.add_parser("recommend", help="top-K items for a history, or for every user of a file",
                       description="Score every item for a history (item ids, oldest first) with a trained run; "
                                   "history items are excluded; the user vector reads the last data.max_seq_len "
                                   "items, exactly as in evaluation. --users scores a file of histories in "
                                   "batches and writes a CSV (user, rank, item_id, score, title).")
    common(p)
    p.add_argument("--history", nargs="+", metavar="ITEM", help="the history's item ids, oldest first")
    p.add_argument("--users", metavar="FILE", help="TSV of 'user TAB item item …' lines (the users.tsv layout)")
    p.add_argument("--out", metavar="FILE", help="CSV to write with --users (written atomically)")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--include-history", action="store_true", help="let history items be recommended again")
    p.set_defaults(fn=cmd_recommend)

    p = sub.add_parser("embed-items", help="add new (cold-start) items to a trained run's candidates",
                       description="Read a catalogue of new items (items.tsv with optional image/video/audio "
                                   "path columns, relative to its folder), run the run's frozen encoders and "
                                   "trained item tower over them, and store them in RUN_DIR/extra_items/; "
                                   "recommend and export then include them. Repeated calls add or replace "
                                   "items by id. ID-only runs cannot embed new items.")
    common(p)
    p.add_argument("--data", required=True, metavar="NEW_CATALOGUE",
                   help="folder holding items.tsv (and its media), or the items.tsv file")
    p.set_defaults(fn=cmd_embed_items)

    p = sub.add_parser("export", help="write item embeddings, weights and a description for serving",
                       description="Write item_embeddings.npy / .safetensors with item_ids.json, "
                                   "model.safetensors (user encoder + item tower) and export.json into DIR, "
                                   "loadable without crossan (see docs/serving.md). Written to a temporary "
                                   "folder and renamed into place.")
    common(p)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.add_argument("--no-extra", action="store_true", help="leave out the run's extra (cold-start) items")
    p.set_defaults(fn=cmd_export)
