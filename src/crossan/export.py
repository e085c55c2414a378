"""Export a trained run for a serving system that does not run crossan (``crossan export RUN_DIR --out DIR``).

``DIR`` holds::

    item_embeddings.npy           float32 [R, d], R = N + 1 + E; row 0 is padding (zeros), rows 1..N the
                                  training items, rows N+1.. the extra (cold-start) items
    item_embeddings.safetensors   the same table under the key "item_embeddings"
    item_ids.json                 [R] row → item id ("" for row 0)
    item_titles.json              [R] row → title
    model.safetensors             the trained weights: "user.*" (SASRec user encoder), "tower.*" (item tower;
                                  frozen backbones of content methods are not included, see export.json)
    config.yaml                   the run's resolved configuration
    export.json                   shapes, dims, method, modalities, max_seq_len, the scoring rule, the user
                                  encoder's hyper-parameters, file checksums, crossan version

Scoring: ``score(user, row) = user_vector · item_embeddings[row]`` (dot product), excluding row 0 and, when
the run was evaluated with ``eval.mask_history=true`` (``export.json["mask_history"]``), the user's history.
See ``docs/serving.md`` for the user encoder's computation and ANN indexing.

Only a finished run (with ``results.json``) is exported: its metrics are copied into export.json. The folder
is written under a temporary name beside ``DIR`` and renamed into place once complete; with ``--force`` it
is swapped with the old folder in one step where the system can (Linux's ``renameat2``), so that a process
killed at any moment leaves an export at ``DIR``, the old one or the new.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

import crossan
from crossan.errors import RunError, ServeError, WriteError
from crossan.runs import RESULTS, check_run_folder, read_results
from crossan.serve import load_recommender
from crossan.utils import NAME_MAX, exchange_paths, file_sha256, write_failure

EXPORT_FORMAT = "crossan-export"
EXPORT_FORMAT_VERSION = 1
FILES = ("item_embeddings.npy", "item_embeddings.safetensors", "item_ids.json", "item_titles.json",
         "model.safetensors", "config.yaml", "export.json")


def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise ServeError(f"{out} already exists; choose another --out or pass --force to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").is_file()):
        raise ServeError(f"{out} exists and is not a crossan export folder; refusing to replace it")


def export_run(run_dir: str | Path, out: str | Path, device: str = "auto", data_path: str | None = None,
               include_extra: bool = True, force: bool = False) -> Path:
    """Write the export folder ``out`` for ``run_dir`` (see the module docstring); returns ``out``.

    Refuses (:class:`RunError`) an unfinished run (no results.json): its export would carry the best weights
    so far and no metrics."""
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        # e.g. RUN/extra_items: the run's own cold-start items would be replaced by the export's files
        raise ServeError(f"{out}: --out lies inside the run folder {run_dir}, whose files it could replace; "
                         "choose a folder outside it")
    _check_out(out, force)
    check_run_folder(run_dir)
    results = read_results(run_dir)
    if results is None:
        raise RunError(f"{run_dir}: unfinished run (no {RESULTS}: training stopped or still runs); only "
                       "a finished run is exported. Finish it (crossan train --resume) or serve it with "
                       "crossan recommend")
    tmp_name = f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    if len(tmp_name.encode("utf-8", "surrogateescape")) > NAME_MAX:  # before anything is computed
        room = len(out.name.encode("utf-8", "surrogateescape")) - (len(tmp_name.encode("utf-8", "surrogateescape"))
                                                                   - NAME_MAX)
        raise RunError(f"{out.name[:60]}…: the folder name is too long for --out (at most {room} bytes here: the "
                       "export is written under a longer temporary name beside it first)")
    rec = load_recommender(run_dir, device=device, data_path=data_path, include_extra=include_extra)
    cfg, model = rec.cfg, rec.model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / tmp_name
    old: Path | None = None  # the folder --force replaces, moved aside until the new one is in place
    try:
        tmp.mkdir()
        table = rec.item_table.detach().float().cpu().contiguous()
        np.save(tmp / "item_embeddings.npy", table.numpy())
        save_file({"item_embeddings": table}, str(tmp / "item_embeddings.safetensors"),
                  metadata={"format": EXPORT_FORMAT, "crossan_version": crossan.__version__,
                            "padding_row": "0", "scoring": "dot_product"})
        (tmp / "item_ids.json").write_text(json.dumps(rec.item_ids, ensure_ascii=False), encoding="utf-8")
        (tmp / "item_titles.json").write_text(json.dumps(rec.titles, ensure_ascii=False), encoding="utf-8")
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # dtypes as trained
        save_file(weights, str(tmp / "model.safetensors"),
                  metadata={"format": EXPORT_FORMAT, "crossan_version": crossan.__version__, "method": cfg.method})
        shutil.copyfile(run_dir / "config.yaml", tmp / "config.yaml")
        tower = model.tower
        frozen: dict[str, Any] = {}
        if hasattr(tower, "features"):  # content towers read frozen encoders that are not in model.safetensors
            from crossan.encoders import resolve_specs

            # a plugin tower may read features without a modalities attribute (docs/method.md's example)
            mods = list(getattr(tower, "modalities", None) or cfg.modalities)
            frozen = {m: dataclasses.asdict(s) for m, s in resolve_specs(cfg, mods).items()}
            frozen = {"preset": cfg.encoders.preset, "specs": frozen,
                      "note": "not included in model.safetensors; item_embeddings already hold their effect"}
        files = {}
        for name in FILES[:-1]:
            entry: dict[str, Any] = {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            if name.startswith("item_embeddings"):
                entry.update(shape=list(table.shape), dtype="float32")
            files[name] = entry
        desc = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "crossan_version": crossan.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source_run": str(run_dir.resolve()),
            "source_weights_sha256": rec.weights_sha256,  # the best.safetensors the table and model came from
            "dataset": rec.data.name,
            "method": cfg.method,
            "modalities": list(cfg.modalities),
            "dim": int(table.shape[1]),
            "rows": int(table.shape[0]),
            "num_items": rec.num_train_items,
            "num_extra_items": len(rec.extra_ids),
            "padding_row": 0,
            "max_seq_len": rec.max_seq_len,
            "mask_history": rec.mask_history,
            "scoring": {
                "rule": "dot_product",
                "score": "user_vector · item_embeddings[row]",
                "exclude": ["row 0 (padding)"]
                + (["the items of the user's history"] if rec.mask_history else []),
                "history": (f"eval.mask_history=true: the metrics masked the history the data protocol keeps "
                            f"(the items before the target among a user's last {rec.max_seq_len + 3} "
                            "interactions); crossan recommend excludes every item of the history it is given"
                            if rec.mask_history else
                            "eval.mask_history=false: history items stay candidates, as in the metrics"),
                "ties": "the evaluator ranks strictly: an item tied with the target counts as above it",
            },
            "user_encoder": {
                "type": "SASRec",
                "weights_prefix": "user.",
                **{k: v for k, v in dataclasses.asdict(cfg.user).items() if k != "dropout"},
                "layer_norm_eps": 1e-6 if cfg.user.variant == "iisan_official" else 1e-5,
                "activation": "relu" if cfg.user.variant == "iisan_official" else "gelu (erf)",
                "attention_bias": cfg.user.variant != "iisan_official",
                "input": "the rows of the history's last max_seq_len items, oldest first, left-padded with 0",
                "output": "the hidden state at the last position",
            },
            "item_tower": {"type": type(tower).__name__, "weights_prefix": "tower.", "frozen_encoders": frozen},
            "metrics": {k: results[k] for k in ("valid", "test", "best_epoch") if k in results},
            "files": files,
        }
        (tmp / "export.json").write_text(json.dumps(desc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for name in FILES:  # readable as any file this user writes; flushed before the rename shows the folder
            os.chmod(tmp / name, 0o666 & ~umask)
            fd = os.open(tmp / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if out.exists():  # --force (checked above): swap, then drop the old folder
            if not force:  # it appeared while this export ran (another export to the same --out): keep it
                raise ServeError(f"{out} was created while the export ran; choose another --out or pass "
                                 "--force to replace it")
            _check_out(out, force)  # and what appeared meanwhile must still be an export folder to replace
            if exchange_paths(tmp, out):  # one step: no moment without an export at out, killed or not
                shutil.rmtree(tmp, ignore_errors=True)  # the old export, now under the temporary name
                return out
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():  # the new one is not in place: the old back
            os.rename(old, out)
        why = write_failure(e, out.parent)
        if why is not None:  # a full disk, a file-size limit, a read-only folder: named, not a library's traceback
            kept = "the export already there is kept" if out.exists() else "nothing was written there"
            raise WriteError(f"{out}: cannot write the export ({why}); {kept}") from None
        raise
    return out
