"""The benchmark scripts whose output docs/results.md quotes: their claims follow the reports' rules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark


def _run(folder: Path, ranks: np.ndarray) -> Path:
    """A finished run folder as compare_runs reads it: results.json and per_user.npz."""
    folder.mkdir(parents=True)
    ndcg = np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0.0)
    folder.joinpath("results.json").write_text(json.dumps({
        "method": "id", "best_epoch": 3, "train_time_per_epoch_s": 1.0, "trainable_params": 10, "mask_history": True,
        "test": {"HR@10": float((ranks <= 10).mean()), "NDCG@10": float(ndcg.mean()), "MRR": float((1 / ranks).mean())}}))
    np.savez(folder / "per_user.npz", valid_ranks=ranks, test_ranks=ranks, users=np.arange(len(ranks)).astype(str),
             split_fingerprint=np.asarray("same-split"))
    return folder


@pytest.mark.parametrize("seeds, star", [(1, False), (2, False), (3, True)])
def test_compare_runs_claims_only_on_three_paired_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         seeds: int, star: bool) -> None:
    """METHOD.md §11 (and the suites' reports since crossan 0.1.5): a significance star rests on at least 3
    paired seeds. compare_runs starred a Holm p < 0.05 on one seed; it now says "no claim" there."""
    compare = load_benchmark("compare_runs")
    n = 400
    best = np.ones(n, dtype=np.int64)  # every target ranked first
    half = np.where(np.arange(n) % 2 == 0, 1, 50)  # half of them ranked 50: Δ NDCG@10 = -0.5, p ≈ 1e-4
    a = [_run(tmp_path / f"a{s}", best) for s in range(seeds)]
    b = [_run(tmp_path / f"b{s}", half) for s in range(seeds)]
    out = tmp_path / "t.csv"
    assert compare.main(["--reference", "A", "A=" + ",".join(map(str, a)), "B=" + ",".join(map(str, b)),
                         "--csv", str(out)]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| B |"))
    assert row.split(" | ")[7] == "-0.5000 [-0.5500, -0.4500]"
    assert row.split(" | ")[8] == "0.0001 (Holm 0.0001)" + (" *" if star else f", {seeds} seed"
                                                           f"{'s' if seeds > 1 else ''} paired: no claim")
    rec = next(r for r in csv.DictReader(out.open()) if r["run"] == "B")
    assert (rec["paired_seeds"], rec["significant"]) == (str(seeds), str(star))


@pytest.mark.parametrize("capped, note", [
    ("", " *"), ("B", "; capped (the epoch cap stopped a paired seed): no claim"),
    ("A", "; reference capped (the epoch cap stopped a paired seed): no claim")])
def test_compare_runs_makes_no_claim_on_runs_the_epoch_cap_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   capped: str, note: str) -> None:
    """compare_runs starred a difference between runs whose training the epoch cap ended (best epoch = last
    epoch, the trainer's own "not shown to have stopped improving"), where a suite's report says "no claim"
    (METHOD.md §11). It now applies the reports' rule to the seeds it pairs, from each run's config.yaml."""
    compare = load_benchmark("compare_runs")
    half = np.where(np.arange(400) % 2 == 0, 1, 50)
    groups = {}
    for name, ranks in (("A", np.ones(400, dtype=np.int64)), ("B", half)):
        groups[name] = [_run(tmp_path / f"{name}{s}", ranks) for s in range(3)]
        for d in groups[name]:  # best epoch 3: capped at 3 epochs, or 7 validations after it of 10 with patience 2
            d.joinpath("config.yaml").write_text(
                f"train:\n  epochs: {3 if name == capped else 10}\n  patience: 2\n  eval_every: 1\n")
    assert compare.main(["--reference", "A"] + [f"{n}=" + ",".join(map(str, ds)) for n, ds in groups.items()]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| B |"))
    assert row.split(" | ")[8] == "0.0001 (Holm 0.0001)" + note


def test_compare_runs_says_when_it_pairs_fewer_seeds_than_a_group_has(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A group of three seeds against a reference of one was tested on one pair without a word."""
    compare = load_benchmark("compare_runs")
    ranks = np.where(np.arange(400) % 2 == 0, 1, 50)
    a = _run(tmp_path / "a0", np.ones(400, dtype=np.int64))
    b = [_run(tmp_path / f"b{s}", ranks) for s in range(3)]
    assert compare.main(["--reference", "A", f"A={a}", "B=" + ",".join(map(str, b))]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| B |"))
    assert row.split(" | ")[8] == "0.0001 (Holm 0.0001), 1 of 3 seeds paired: no claim"


def test_compare_runs_gives_one_seeds_mean_without_an_interval(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of one seed each (README: "any two runs on the same split can be compared") were printed as
    "0.5000 ± nan"; a single seed's mean now stands alone, as in the suites' tables."""
    compare = load_benchmark("compare_runs")
    a = _run(tmp_path / "a0", np.ones(400, dtype=np.int64))
    b = _run(tmp_path / "b0", np.where(np.arange(400) % 2 == 0, 1, 50))
    assert compare.main(["--reference", "A", f"A={a}", f"B={b}"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    row = next(r for r in out.splitlines() if r.startswith("| B |"))
    assert row.split(" | ")[4:7] == ["0.5000", "0.5000", "0.5100"]


def test_compare_runs_gives_seconds_per_epoch_to_the_hundredth(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A run of 0.04 s per epoch showed as 0.0 (one decimal); two decimals now, as in the suites' tables."""
    compare = load_benchmark("compare_runs")
    a = _run(tmp_path / "a0", np.ones(400, dtype=np.int64))
    results = json.loads((a / "results.json").read_text())
    (a / "results.json").write_text(json.dumps(results | {"train_time_per_epoch_s": 0.04}))
    assert compare.main(["--reference", "A", f"A={a}"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| A |"))
    assert row.split(" | ")[-2] == "0.04"


def test_compare_runs_refuses_one_run_listed_as_several_seeds(tmp_path: Path) -> None:
    """A second reader (2026-12-04) listed one folder three times per group: compare_runs counted three seeds,
    an interval of ± 0.0000 and a starred p that the same folders listed once did not claim."""
    compare = load_benchmark("compare_runs")
    ranks = np.arange(1, 201)
    a, b = _run(tmp_path / "a", ranks), _run(tmp_path / "b", ranks[::-1].copy())
    with pytest.raises(SystemExit, match=r"A: .*a and .*a are the same run folder"):
        compare.main(["--reference", "A", f"A={a},{a},{tmp_path / 'x' / '..' / 'a'}", f"B={b}"])
    c = _run(tmp_path / "c", ranks)
    for folder in (a, c):
        (folder / "config.yaml").write_text("seed: 7\n")
    with pytest.raises(SystemExit, match=r"A: .*a and .*c are seed 7 twice"):
        compare.main(["--reference", "A", f"A={a},{c}", f"B={b}"])
    (a / "config.yaml").write_text("")  # an empty config.yaml names no seed: no AttributeError
    assert compare.main(["--reference", "A", f"A={a},{c}", f"B={b}"]) == 0


def test_compare_runs_pairs_runs_of_the_same_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second reader (2026-12-04) compared seeds 1, 2 of one group with seeds 0, 1, 2 of the reference:
    compare_runs paired them by position (1 with 0, 2 with 1) and did not say which seeds it paired."""
    compare = load_benchmark("compare_runs")
    n = 200

    def seeded(folder: Path, seed: int) -> Path:  # seed s: every target ranked s + 1
        run = _run(folder, np.full(n, seed + 1, dtype=np.int64))
        (run / "config.yaml").write_text(f"seed: {seed}\n")
        return run

    a = [seeded(tmp_path / f"a{s}", s) for s in range(3)]
    b = [seeded(tmp_path / f"b{s}", s) for s in (2, 1)]  # the same runs as A's seeds 2 and 1, listed in reverse
    assert compare.main(["--reference", "A", "A=" + ",".join(map(str, a)), "B=" + ",".join(map(str, b)),
                         "--csv", str(tmp_path / "t.csv")]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| B |")).split(" | ")
    assert row[7].startswith("+0.0000 ")  # by position it was (NDCG(rank 3) - 1 + NDCG(rank 2) - NDCG(rank 2)) / 2
    assert "paired on seeds 1,2: no claim" in row[8]
    rec = next(r for r in csv.DictReader((tmp_path / "t.csv").open()) if r["run"] == "B")
    assert (rec["paired_by"], rec["paired_on"], rec["paired_seeds"]) == ("seed", "1,2", "2")
    c = seeded(tmp_path / "c5", 5)
    compare.main(["--reference", "A", "A=" + ",".join(map(str, a)), f"C={c}"])
    assert "not paired (no seed in common)" in capsys.readouterr().out


def test_compare_runs_makes_no_claim_on_few_test_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a handful of users the paired bootstrap's p is too small; as in the suites' reports, a claim needs
    MIN_CLAIM_USERS paired users."""
    from crossan.reports.table import MIN_CLAIM_USERS

    compare = load_benchmark("compare_runs")
    n = MIN_CLAIM_USERS - 1
    a = [_run(tmp_path / f"a{s}", np.ones(n, dtype=np.int64)) for s in range(3)]
    b = [_run(tmp_path / f"b{s}", np.full(n, 2, dtype=np.int64)) for s in range(3)]
    assert compare.main(["--reference", "A", "A=" + ",".join(map(str, a)), "B=" + ",".join(map(str, b))]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| B |"))
    assert row.split(" | ")[8] == f"0.0001 (Holm 0.0001); too few users paired ({n} < {MIN_CLAIM_USERS}): no claim"


def test_compare_runs_refuses_a_group_of_different_settings(tmp_path: Path) -> None:
    """The same reader listed a 400-epoch run and a 1-epoch run as two seeds of one group: one mean ± interval
    and a paired test, the difference visible only in the best-epochs column."""
    compare = load_benchmark("compare_runs")
    ranks = np.arange(1, 201)
    a0, a1 = _run(tmp_path / "a0", ranks), _run(tmp_path / "a1", ranks)
    a0.joinpath("config.yaml").write_text("seed: 0\ntrain:\n  epochs: 400\n")
    a1.joinpath("config.yaml").write_text("seed: 1\ntrain:\n  epochs: 1\ndata:\n  path: elsewhere\n")
    with pytest.raises(SystemExit, match=r"A: its runs differ in more than their seed .*\n  train.epochs: 400 → 1\n"
                                         r"List them as separate groups"):
        compare.main(["--reference", "A", f"A={a0},{a1}"])
    a1.joinpath("config.yaml").write_text("seed: 1\ntrain:\n  epochs: 400\ndata:\n  path: elsewhere\n"
                                          "device: cuda:1\ncache:\n  dir: /scratch/b\n")
    assert compare.main(["--reference", "A", f"A={a0},{a1}"]) == 0  # the data's place, the device may differ …
    np.savez(a1 / "per_user.npz", valid_ranks=ranks, test_ranks=ranks, users=np.arange(200).astype(str),
             split_fingerprint=np.asarray("another-split"))
    with pytest.raises(SystemExit, match="A: its runs were evaluated on different splits"):
        compare.main(["--reference", "A", f"A={a0},{a1}"])  # … its split may not
    np.savez(a1 / "per_user.npz", valid_ranks=ranks, test_ranks=ranks, users=np.arange(200).astype(str),
             split_fingerprint=np.asarray("same-split"))
    # a key this crossan does not know (a newer version's) in one config: compared on the keys both record
    a1.joinpath("config.yaml").write_text("seed: 1\ntrain:\n  epochs: 400\nnewer:\n  key: 1\n")
    assert compare.main(["--reference", "A", f"A={a0},{a1}"]) == 0
    a1.joinpath("config.yaml").write_text("seed: 1\ntrain:\n  epochs: 2\nnewer:\n  key: 1\n")
    with pytest.raises(SystemExit, match=r"train.epochs: 400 → 2"):
        compare.main(["--reference", "A", f"A={a0},{a1}"])


def test_a_p_value_is_never_printed_as_alpha_when_it_is_not() -> None:
    """Holm over two tests of a raw p 250/10001 gave 0.049995, printed "0.0500 *" beside an unstarred 0.0500."""
    from crossan.reports.table import p_text

    assert [p_text(p) for p in (0.049995, 0.05, 0.0500004, 0.0429, 1.0, 1 / 10001)] == [
        "0.04999", "0.0500", "0.0500004", "0.0429", "1.0000", "0.0001"]
