"""Full-ranking metrics against a brute-force reference and against torchmetrics, ties included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_benchmark
from crossan import evaluation
from crossan.evaluation import evaluate_split, mean_metrics, rank_split, strict_ranks


def brute_force_rank(scores: np.ndarray, target: int, history: set[int]) -> float:
    """Rank by a plain loop: items scoring at least as high as the target, excluding padding/history.
    A target inside the (masked) history is not a candidate: rank inf (METHOD.md §2, IISAN's rule)."""
    if target in history:
        return float("inf")
    rank = 1
    for j in range(1, len(scores)):
        if j == target or j in history:
            continue
        if scores[j] >= scores[target]:
            rank += 1
    return rank


def _random_case(seed: int, B: int = 40, N: int = 30, H: int = 6, levels: int = 5):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(B, N + 1)).astype(np.float32)  # few levels: many ties
    targets = rng.integers(1, N + 1, size=B)
    history = rng.integers(0, N + 1, size=(B, H))
    history[::2, 0] = targets[::2]  # half the targets repeat a history item: masked, never a hit
    return scores, targets, history


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
"""strict_ranks counts on a GPU with its own code path (mutation testing found no CPU test reaches it)."""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strict_ranks_match_brute_force(seed: int, device: str) -> None:
    scores, targets, history = _random_case(seed)
    ranks = strict_ranks(*(torch.tensor(a, device=device) for a in (scores, targets, history))).cpu().numpy()
    expected = [brute_force_rank(scores[b], targets[b], set(history[b]) - {0}) for b in range(len(targets))]
    np.testing.assert_array_equal(ranks, expected)


def _brute_force_any(scores: np.ndarray, target: int, history: set[int], mask_history: bool) -> float:
    """The rule of :func:`strict_ranks` by a plain loop, non-finite scores included (they count as -inf)."""
    if target == 0 or (mask_history and target in history):
        return float("inf")
    clean = np.where(np.isfinite(scores), scores, -np.inf)
    rank = 1
    for j in range(1, len(scores)):
        if j != target and not (mask_history and j in history) and clean[j] >= clean[target]:
            rank += 1
    return rank


@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("overwrite", [True, False])
def test_strict_ranks_match_brute_force_with_non_finite_scores_in_blocks(monkeypatch: pytest.MonkeyPatch,
                                                                        mask_history: bool, overwrite: bool) -> None:
    monkeypatch.setattr(evaluation, "COUNT_BLOCK", 64)  # 2 rows per block: the blocked count crosses block edges
    rng = np.random.default_rng(7)
    scores, targets, history = _random_case(11, B=61, N=30, H=8, levels=4)
    special = rng.choice([np.nan, np.inf, -np.inf], size=scores.shape)
    scores = np.where(rng.random(scores.shape) < 0.15, special, scores).astype(np.float32)
    scores[3, targets[3]] = np.nan  # a non-finite target ties with every candidate
    scores[5] = np.nan  # a whole row non-finite
    history[7] = 0  # a user whose history is all padding
    history[9] = history[9, 0]  # one item repeated across the whole history
    given = torch.tensor(scores)
    ranks = strict_ranks(given, torch.tensor(targets), torch.tensor(history), mask_history, overwrite=overwrite)
    expected = [_brute_force_any(scores[b], targets[b], set(history[b]) - {0}, mask_history)
                for b in range(len(targets))]
    np.testing.assert_array_equal(ranks.numpy(), expected)
    assert np.isfinite(ranks.numpy()).any() and np.isinf(ranks.numpy()).any() == mask_history
    if not overwrite:  # the caller's scores are left as they were
        np.testing.assert_array_equal(given.numpy(), scores)


def test_ties_never_help_the_target() -> None:
    scores = torch.zeros(1, 11)  # every item tied
    assert strict_ranks(scores, torch.tensor([3])).item() == 10
    scores[0, 3] = 1e-6
    assert strict_ranks(scores, torch.tensor([3])).item() == 1


def test_float64_scores_are_ranked_as_given() -> None:
    """A float32 copy of float64 scores tied 1 + 1e-12 with 1 and made 1e39 infinite (ranked last)."""
    scores = torch.tensor([[0.0, 1 + 1e-12, 1.0, 0.5], [0.0, 1e39, 3e38, 0.5]], dtype=torch.float64)
    assert strict_ranks(scores, torch.tensor([1, 1])).tolist() == [1.0, 1.0]
    assert strict_ranks(scores, torch.tensor([2, 2])).tolist() == [2.0, 2.0]
    assert strict_ranks(scores.clone(), torch.tensor([1, 2]), overwrite=True).tolist() == [1.0, 2.0]


def _metrics_reference(scores: np.ndarray, targets: np.ndarray, history: np.ndarray, ks: list[int]):
    import torchmetrics.functional.retrieval as R

    out = {f"{m}@{k}": [] for m in ("HR", "NDCG") for k in ks}
    out["MRR"] = []
    for b in range(len(targets)):
        hist = set(history[b]) - {0}
        if targets[b] in hist:  # masked target (IISAN's rule): no hit, reciprocal rank 0
            for k in ks:
                out[f"HR@{k}"].append(0.0)
                out[f"NDCG@{k}"].append(0.0)
            out["MRR"].append(0.0)
            continue
        cands = [j for j in range(1, scores.shape[1]) if j == targets[b] or j not in hist]
        # break ties against the target (our documented convention), then hand a tie-free ranking over
        order = sorted(cands, key=lambda j: (-scores[b, j], j == targets[b]))
        preds = torch.tensor([float(len(order) - order.index(j)) for j in cands])  # positive: MRR ignores preds <= 0
        rel = torch.tensor([j == targets[b] for j in cands])
        for k in ks:
            out[f"HR@{k}"].append(float(R.retrieval_hit_rate(preds, rel, top_k=k)))
            out[f"NDCG@{k}"].append(float(R.retrieval_normalized_dcg(preds, rel, top_k=k)))
        out["MRR"].append(float(R.retrieval_reciprocal_rank(preds, rel, top_k=len(cands))))
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("seed", [3, 4])
def test_metrics_match_torchmetrics(seed: int) -> None:
    pytest.importorskip("torchmetrics")
    scores, targets, history = _random_case(seed, B=50, N=40, levels=6)
    ours = mean_metrics(strict_ranks(torch.tensor(scores), torch.tensor(targets), torch.tensor(history)), [5, 10, 20])
    ref = _metrics_reference(scores, targets, history, [5, 10, 20])
    for name, v in ref.items():
        assert ours[name] == pytest.approx(v, abs=1e-6), name  # torchmetrics computes in float32


def test_evaluate_split_batches_agree_and_formula() -> None:
    rng = np.random.default_rng(7)
    N, d, B, L = 25, 8, 37, 4
    table = torch.tensor(rng.normal(size=(N + 1, d)), dtype=torch.float32)
    table[0] = 0
    inputs = rng.integers(0, N + 1, size=(B, L))
    targets = rng.integers(1, N + 1, size=B)
    history = inputs.copy()  # some targets repeat: their ranks are inf
    user_fn = lambda x: table[x].sum(1)  # noqa: E731
    a = evaluate_split(user_fn, table, inputs, targets, history, [5, 10], batch_size=8)
    ranks = rank_split(user_fn, table, inputs, targets, history, batch_size=8)
    b = evaluate_split(user_fn, table, inputs, targets, history, [5, 10], batch_size=1000)
    assert a == pytest.approx(b)
    r = ranks.double()
    assert a["NDCG@10"] == pytest.approx(float(torch.where(r <= 10, 1 / torch.log2(r + 1), torch.zeros_like(r)).mean()))
    assert a["HR@5"] == pytest.approx(float((r <= 5).double().mean()))
    assert a["MRR"] == pytest.approx(float((1 / r).mean()))
    assert torch.isinf(r).any() and torch.isfinite(r).any()  # both cases occur in this case


def test_a_long_ranking_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """Ranking a million users took half an hour with nothing printed (it looked hung); a ranking that takes
    over 2 s shows a bar of its batches, unless progress is off, and the ranks do not depend on it."""
    import time

    rng = np.random.default_rng(3)
    table = torch.tensor(rng.normal(size=(11, 4)), dtype=torch.float32)
    inputs, targets = rng.integers(1, 11, size=(6, 3)), rng.integers(1, 11, size=6)

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.9)
        return table[x].sum(1)

    shown = rank_split(slow, table, inputs, targets, inputs, batch_size=2, progress=True, desc="epoch 1: valid")
    err = capsys.readouterr().err
    assert "epoch 1: valid" in err and "/3" in err
    quiet = rank_split(slow, table, inputs, targets, inputs, batch_size=2)
    assert capsys.readouterr().err == "" and torch.equal(shown, quiet)


def test_ranking_benchmark_checks_rank_split_against_the_plain_form(tmp_path: Path) -> None:
    bench = load_benchmark("ranking")
    # 300 users in batches of 128 (a short last batch), 50 items: the benchmark raises if the ranks differ
    bench.main(["--items", "50", "--users", "300", "--history", "7", "--batch-size", "128", "--rounds", "1",
                "--out", str(tmp_path)])
    result = json.loads((tmp_path / "ranking.json").read_text())["result"]
    assert set(result["ms_per_batch"]) == {"rank_split", "matmul", "strict_ranks", "plain"}


@pytest.mark.parametrize("split", ["validation", "val", "Test", ""])
def test_an_unknown_split_name_is_refused_not_scored_as_test(split: str) -> None:
    """``evaluate(..., "validation", ...)`` used to score the test split (model selection on test)."""
    from crossan.config import Config
    from crossan.ranking import evaluate

    with pytest.raises(ValueError, match=f"split: {split!r} is not 'valid' or 'test'"):
        evaluate(None, None, split, Config())  # type: ignore[arg-type]  # refused before either is read
