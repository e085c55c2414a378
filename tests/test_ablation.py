"""The built-in study suites (``ablation``, issue 18; ``fidelity``, issue 17) and the figures they produce.

The suites are checked as declarations (runs, reference, modality order, which switch each run flips); the
figures are drawn from hand-made table rows and must follow the numbers in them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crossan.config import load_config
from crossan.reports.plots import modality_curves, plot_all
from crossan.reports.suite import load_suite, run_overrides

ROOT = Path(__file__).resolve().parents[1]


def _cfg(suite, name):
    run = next(r for r in suite.runs if r.name == name)
    return load_config([], run_overrides(suite, run, "x", suite.seeds[0]))


def test_ablation_suite_declares_the_study():
    s = load_suite("ablation")
    assert s.seeds == [0, 1, 2] and s.reference == "CROSSAN-M4" and s.preset == "offline"
    order = ["text", "image", "audio", "video"]
    for method in ("CROSSAN", "IISAN"):
        for k in range(1, 5):
            cfg = _cfg(s, f"{method}-M{k}")
            assert cfg.method == method.lower() and cfg.modalities == order[:k]
    assert _cfg(s, "exchange-none").crossan.exchange == "none"
    assert _cfg(s, "exchange-inputs").crossan.exchange == "inputs"
    assert _cfg(s, "CROSSAN-M4").crossan.exchange == "softmax"
    assert {_cfg(s, n).crossan.fusion for n in ("CROSSAN-M4", "fusion-concat", "fusion-mean")} == {
        "momef", "concat", "mean"}
    assert _cfg(s, "momef-top2").crossan.momef_top_k == 2
    assert _cfg(s, "momef-balance").crossan.load_balance_weight > 0
    assert _cfg(s, "shared-adapters").crossan.share_adapters
    # every M = 4 ablation differs from the reference in exactly the switch it names
    ref = _cfg(s, "CROSSAN-M4").crossan
    for r in s.runs:
        if r.name.startswith(("exchange-", "fusion-", "shared-")):
            cfg = _cfg(s, r.name)
            assert cfg.modalities == order
            diff = [k for k, v in vars(cfg.crossan).items() if getattr(ref, k) != v]
            assert len(diff) == 1, (r.name, diff)


def test_fidelity_suite_changes_one_thing_at_a_time():
    s = load_suite("fidelity")
    assert s.reference == "IISAN" and s.seeds == [0, 1, 2]
    base = _cfg(s, "IISAN")
    official = load_config([ROOT / "configs" / "iisan_official.yaml"])

    def flat(cfg):
        return {f"{sec}.{k}": v for sec in ("iisan", "user", "train", "cache")
                for k, v in vars(getattr(cfg, sec)).items()}

    b, o = flat(base), flat(official)
    recipe_keys = {k for k in o if o[k] != b[k] and not k.startswith("train.")} | {
        "train.negatives", "train.pop_smoothing"}
    # the suite's IISAN-official run sets exactly what the recipe sets (apart from run-length keys)
    got = flat(_cfg(s, "IISAN-official"))
    assert {k for k in got if got[k] != b[k]} == recipe_keys
    assert all(got[k] == o[k] for k in recipe_keys)
    singles = [r.name for r in s.runs if r.name.startswith("+")]
    changed = set()
    for name in singles:
        cfg = flat(_cfg(s, name))
        diff = {k for k in cfg if cfg[k] != b[k]}
        assert len(diff) == 1, (name, diff)
        changed |= diff
    assert changed == recipe_keys  # every official difference is tested alone
    # the recipe with standardisation kept differs from it in that key only
    plus = flat(_cfg(s, "IISAN-official+std"))
    assert {k for k in plus if plus[k] != got[k]} == {"cache.standardize"}
    # CROSSAN with the official settings it can share: the same user encoder, loss, dropout and raw states
    shared = _cfg(s, "CROSSAN-official-shared")
    off = _cfg(s, "IISAN-official")
    assert shared.user == off.user and shared.cache == off.cache
    assert (shared.train.negatives, shared.train.pop_smoothing) == (off.train.negatives, off.train.pop_smoothing)
    assert shared.crossan.dropout == off.iisan.dropout == 0


def _row(name, ndcg, ci=0.002, params=1000, t=1.0, **kw):
    row = {"name": name, "status": "ok", "cost_only": False, "method": "crossan", "test_NDCG@10_mean": ndcg,
           "test_NDCG@10_ci95": ci, "test_HR@10_mean": 2 * ndcg, "trainable_params": params, "time_per_epoch_s": t,
           "peak_memory_bytes": 2 ** 20}
    row.update(kw)
    return row


def _rows():
    return [_row("CROSSAN-M1", 0.010, params=1000, t=1.0), _row("CROSSAN-M2", 0.014, params=2000, t=1.5),
            _row("CROSSAN-M4", 0.020, params=4000, t=2.5, p_value_note="reference"),
            _row("IISAN-M1", 0.009, params=1500, t=1.2, significant=True, p_value=0.001),
            _row("IISAN-M2", 0.012, params=4500, t=2.0, significant=False, p_value=0.3),
            _row("exchange-none", 0.018, significant=False, p_value=0.2)]


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_modality_curves_group_runs_by_name():
    curves = modality_curves(_rows())
    assert sorted(curves) == ["CROSSAN", "IISAN"]
    assert [k for k, _ in curves["CROSSAN"]] == [1, 2, 4]
    assert modality_curves([_row("CROSSAN-M1", 0.1), _row("other", 0.2)]) == {}  # one point: no curve


def test_study_figures_are_drawn_and_follow_the_numbers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    names = plot_all(_rows(), a)
    assert "ndcg_vs_modalities.png" in names and "ablation_bars.png" in names
    for n in ("ndcg_vs_modalities.png", "ablation_bars.png"):
        px = _pixels(a / n)
        assert px.shape[0] >= 300 and len(np.unique(px.reshape(-1, 3), axis=0)) > 8
    moved = _rows()
    moved[1]["test_NDCG@10_mean"] = 0.005
    plot_all(moved, b)
    assert not np.array_equal(_pixels(a / "ndcg_vs_modalities.png"), _pixels(b / "ndcg_vs_modalities.png"))
    assert not np.array_equal(_pixels(a / "ablation_bars.png"), _pixels(b / "ablation_bars.png"))
    # significance marks: the same numbers without the * draw another picture
    unmarked = _rows()
    unmarked[3]["significant"] = False
    plot_all(unmarked, c)
    assert not np.array_equal(_pixels(a / "ablation_bars.png"), _pixels(c / "ablation_bars.png"))


def test_study_figures_need_their_runs(tmp_path):
    rows = [_row("ID", 0.01), _row("CROSSAN", 0.02)]
    names = plot_all(rows, tmp_path)
    assert "ndcg_vs_modalities.png" not in names and "ablation_bars.png" not in names
    rows[1]["time_per_epoch_s"] = math.nan
    assert "ablation_bars.png" not in plot_all(rows, tmp_path)


@pytest.mark.parametrize("suite", ["ablation", "fidelity"])
def test_study_suites_state_their_wall_time(suite):
    text = (ROOT / "src" / "crossan" / "suites" / f"{suite}.yaml").read_text()
    # a measured figure with its machine, not an estimate (docs/results.md §9, §11 have the runs)
    assert "Wall time, measured:" in text and "2-core project" in text and "estimate" not in text


def test_dominant_suite_generates_data_with_the_dominant_modality(tmp_path: Path):
    import json

    from crossan.config import ConfigError
    from crossan.reports.suite import resolve_data

    s = load_suite("dominant")
    assert s.data == "synth:small:0:image" and s.reference == "CROSSAN-MOMEF" and s.seeds == [0, 1, 2]
    assert {_cfg(s, r.name).crossan.fusion for r in s.runs if r.method == "crossan"} == {"momef", "concat"}
    folder = resolve_data("synth:tiny:3:audio", tmp_path)
    assert folder.name.startswith("synth-tiny-3-dominant-audio-v")
    params = json.loads((folder / "meta.json").read_text())["params"]
    assert params["dominant"] == "audio" and params["seed"] == 3 and params["size"] == "tiny"
    # without the third field the same size and seed give the spread tastes, in another folder
    plain = resolve_data("synth:tiny:3", tmp_path)
    assert json.loads((plain / "meta.json").read_text())["params"]["dominant"] is None
    assert (plain / "users.tsv").read_text() != (folder / "users.tsv").read_text()
    for bad in ("synth:tiny:3:smell", "synth:tiny:x", "synth:tiny:0:image:extra"):
        with pytest.raises(ConfigError, match="data: "):
            resolve_data(bad, tmp_path)
