"""Slow tests on the real Amazon Scientific data (IISAN layout: users.tsv, items.tsv).

The folder is ``$CROSSAN_AMAZON_DATA``, by default ``../shared/data/amazon-scientific`` beside the repository;
the tests skip when it is absent. Run them with ``pytest -m slow tests/test_amazon.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.config import load_config
from crossan.data import prepare
from crossan.evaluation import mean_metrics, strict_ranks

ROOT = Path(__file__).resolve().parents[1]
AMAZON = Path(os.environ.get("CROSSAN_AMAZON_DATA") or ROOT.parent / "shared" / "data" / "amazon-scientific")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (AMAZON / "users.tsv").is_file(),
                       reason=f"no Amazon Scientific data at {AMAZON} (set CROSSAN_AMAZON_DATA)"),
]


def _cfg(*overrides: str):
    return load_config([], [f"data.path={AMAZON}", "device=cpu", *overrides])


def test_amazon_reads_to_the_documented_counts() -> None:
    data = prepare(_cfg().data)
    # docs/results.md §1: 12,076 users and 20,314 items after the protocol (≥ 5 interactions, last 13 kept)
    assert (data.num_users, data.num_items) == (12_076, 20_314)
    assert len(data.test.targets) == len(data.valid.targets) == 12_076
    assert all(r.text for r in data.catalogue)


def _popularity_metrics(data, ks: list[int]) -> dict[str, float]:
    """The same protocol with every user scoring items by their training count (the measured baseline)."""
    scores_row = torch.as_tensor(np.asarray(data.item_counts), dtype=torch.float64)  # [N+1]; row 0 never ranks
    ranks = []
    targets = torch.as_tensor(data.test.targets)
    history = torch.as_tensor(data.test.history)
    for start in range(0, len(targets), 1024):
        t, h = targets[start:start + 1024], history[start:start + 1024]
        ranks.append(strict_ranks(scores_row.expand(len(t), -1).clone(), t, h))
    return mean_metrics(torch.cat(ranks), ks)


def test_amazon_id_training_beats_popularity(tmp_path: Path) -> None:
    from crossan.trainer import train

    cfg = _cfg("method=id", "train.epochs=2")
    data = prepare(cfg.data)
    res = train(cfg, tmp_path / "id", data=data, progress=False)
    pop = _popularity_metrics(data, cfg.eval.ks)
    assert res["best_epoch"] >= 1
    # measured 2026-11-30 (seed 12345, shared machine): after 2 epochs ID has test NDCG@10 0.0104 and HR@10
    # 0.0176 against popularity's 0.0094 and 0.0150 (the documented full run reaches 0.0770 at epoch 28);
    # a broken trainer or protocol ranks below popularity
    assert res["test"]["NDCG@10"] > pop["NDCG@10"], (res["test"], pop)
    assert res["test"]["HR@10"] > pop["HR@10"], (res["test"], pop)
