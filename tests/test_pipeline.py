"""End to end on real files: tiny synthetic multimodal data → cache → side networks, cached vs live,
missing modalities flowing through, and the suite runner's table (failed runs included)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.cache import build_cache
from crossan.config import load_config
from crossan.data import prepare
from crossan.data.synth import generate
from crossan.reports.stats import ndcg_at
from crossan.reports.suite import load_suite, run_suite
from crossan.trainer import build_model, load_weights
from crossan.utils import count_params

MODS = ["text", "image", "video", "audio"]


@pytest.fixture(scope="module")
def tiny_cached(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipe")
    data_dir = generate(root / "data", size="tiny", seed=3, missing_rate=0.2, progress=False)
    cache_dir = root / "cache"
    cfg = load_config([], [f"data.path={data_dir}", "encoders.preset=tiny", f"cache.dir={cache_dir}",
                           "device=cpu", "precision=fp32"])
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    return data_dir, cache_dir


def _cfg(data_dir: Path, cache_dir: Path, *extra: str):
    # fp32: cached and live states are compared to a tolerance that bf16 does not meet (bf16: tests/test_bf16.py)
    return load_config([], [f"data.path={data_dir}", "encoders.preset=tiny", f"cache.dir={cache_dir}", "device=cpu",
                            "precision=fp32",
                            f"modalities=[{','.join(MODS)}]", "crossan.side_dim=32", "iisan.side_dim=32", *extra])


@pytest.mark.parametrize("method", ["crossan", "iisan", "frozen"])
def test_cached_and_live_item_embeddings_agree(tiny_cached, method: str) -> None:
    data_dir, cache_dir = tiny_cached
    data = prepare(_cfg(data_dir, cache_dir).data)
    assert any(not r.has(m) for r in data.catalogue for m in ("image", "video", "audio")), "need missing media"
    torch.manual_seed(0)
    cached = build_model(_cfg(data_dir, cache_dir, f"method={method}"), data, torch.device("cpu")).eval()
    torch.manual_seed(0)
    live = build_model(_cfg(data_dir, cache_dir, f"method={method}", "cached=false"), data,
                       torch.device("cpu")).eval()
    live.load_state_dict(cached.state_dict())
    a, b = cached.tower.embed_all(64), live.tower.embed_all(64)
    assert torch.isfinite(a).all()
    # the cache stores fp16; the live path computes in fp32
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_missing_modalities_flow_through_training(tiny_cached, tmp_path: Path) -> None:
    from crossan.trainer import train

    data_dir, cache_dir = tiny_cached
    res = train(_cfg(data_dir, cache_dir, "method=crossan", "train.epochs=2"), tmp_path / "run", progress=False)
    weights = res["tower"]["router_weight"]
    assert set(weights) == set(MODS) and abs(sum(weights.values()) - 1) < 1e-6
    assert all(v > 0 for v in weights.values())
    assert all(torch.isfinite(torch.tensor(list(res["test"].values()))))


def test_compile_auto_is_resolved_per_run(tiny_cached, tmp_path: Path, monkeypatch) -> None:
    """``train.compile=auto`` (the default): a short run trains eager and says so in train.log and results.json;
    the same data and method resolve to compiled once the run is long enough, and a method without a side
    network never does. ``true``/``false`` are taken as set."""
    from crossan.towers import content
    from crossan.trainer import resolve_compile, train

    data_dir, cache_dir = tiny_cached
    res = train(_cfg(data_dir, cache_dir, "method=iisan", "train.epochs=1"), tmp_path / "run", progress=False)
    assert res["train_compiled"] is False
    log = (tmp_path / "run" / "train.log").read_text()
    assert "side network eager: train.compile=auto: off (the run may take as few as " in log
    data = prepare(_cfg(data_dir, cache_dir).data)
    cpu = torch.device("cpu")
    monkeypatch.setattr(content, "COMPILE_AUTO_MIN_STEPS", 1)
    for method, expected in [("crossan", True), ("iisan", True), ("frozen", False)]:
        cfg = _cfg(data_dir, cache_dir, f"method={method}")
        model = build_model(cfg, data, cpu)
        on, why = resolve_compile(cfg, data, model, cpu)
        assert on is expected and model.tower.compile is expected, (method, why)
    inputs = _cfg(data_dir, cache_dir, "method=crossan", "crossan.exchange=inputs")  # its own loop: never compiled
    assert resolve_compile(inputs, data, build_model(inputs, data, cpu), cpu)[0] is False
    for setting, expected in [("true", True), ("false", False)]:
        cfg = _cfg(data_dir, cache_dir, "method=crossan", f"train.compile={setting}")
        model = build_model(cfg, data, cpu)
        assert resolve_compile(cfg, data, model, cpu) == (expected, f"train.compile={setting}")
        assert model.tower.compile is expected


@pytest.mark.subprocess
def test_suite_table_reports_failures_and_counts(tiny_cached, tmp_path: Path) -> None:
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        "description: test\ndata: synth:tiny\npreset: tiny\nseeds: [0, 1]\nreference: CROSSAN\n"
        "overrides: [train.epochs=1, crossan.side_dim=32]\n"
        "runs:\n"
        "  - {name: ID, method: id}\n"
        "  - {name: CROSSAN, method: crossan, modalities: [text, image]}\n"
        "  - {name: Capped, method: frozen, modalities: [text], overrides: [train.max_steps_per_epoch=1]}\n"
        "  - {name: Broken, method: crossan, modalities: [text], overrides: [cache.dir=/dev/null/crossan-cache]}\n")
    out = tmp_path / "bench"
    rows = run_suite(load_suite(str(suite_file)), out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "building the layer-state cache for its overrides" in rows[3]["error"]
    with open(out / "results.csv") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    assert list(table) == ["ID", "CROSSAN", "Capped", "Broken"] and table["Broken"]["status"] == "failed"
    data = next((out / "data").iterdir())  # the report names the generated data's content digest
    assert f"(content digest `{json.loads((data / 'meta.json').read_text())['digest']}`)" in (
        out / "report.md").read_text()
    # seeds: two for the converged runs, one for the cost-only run, whose quality columns stay blank
    assert [table[n]["seeds"] for n in ("ID", "CROSSAN", "Capped")] == ["0,1", "0,1", "0"]
    assert table["Capped"]["cost_only"] == "True" and table["Capped"]["test_NDCG@10_mean"] == ""
    assert table["Capped"]["p_value"] == "" and float(table["Capped"]["time_per_epoch_s"]) > 0
    # mean and t-interval over the seeds' own results.json; per-user NDCG@10 from per_user.npz gives the mean
    for name in ("ID", "CROSSAN"):
        per_seed = [json.loads((out / "runs" / name / f"seed-{s}" / "results.json").read_text())["test"]
                    for s in (0, 1)]
        vals = [r["NDCG@10"] for r in per_seed]
        assert float(table[name]["test_NDCG@10_mean"]) == pytest.approx(sum(vals) / 2)
        # two seeds: half-width = t(0.975, 1) · s / √2 = 12.7062 · |a − b| / 2
        assert float(table[name]["test_NDCG@10_ci95"]) == pytest.approx(12.7062 * abs(vals[0] - vals[1]) / 2,
                                                                        rel=1e-4)
        for s, want in zip((0, 1), vals):
            with np.load(out / "runs" / name / f"seed-{s}" / "per_user.npz") as z:
                assert ndcg_at(z["test_ranks"]).mean() == pytest.approx(want)
    # the paired difference is the per-user difference averaged over seeds and users
    diffs = []
    for s in (0, 1):
        with np.load(out / "runs" / "ID" / f"seed-{s}" / "per_user.npz") as a, \
                np.load(out / "runs" / "CROSSAN" / f"seed-{s}" / "per_user.npz") as b:
            diffs.append(ndcg_at(a["test_ranks"]) - ndcg_at(b["test_ranks"]))
    assert float(table["ID"]["diff_NDCG@10"]) == pytest.approx(float(np.mean(diffs)))
    assert 0 < float(table["ID"]["p_value"]) <= 1 and table["CROSSAN"]["p_value"] == ""
    report = (out / "report.md").read_text()
    assert "Broken" in (out / "results.md").read_text() and "| Capped | frozen | text | 0 | cost only |" in report
    assert (out / "ndcg_vs_params.png").stat().st_size > 1000
    # the harness's parameter counts equal a direct count of the rebuilt model
    run_dir = out / "runs" / "CROSSAN" / "seed-0"
    import yaml

    from crossan.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    model = build_model(cfg, prepare(cfg.data), torch.device("cpu"))
    load_weights(model, run_dir / "best.safetensors")
    direct = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert rows[1]["trainable_params"] == direct == count_params(model)[0]
    res = json.loads((run_dir / "results.json").read_text())
    # the recorded cost figures are what the run measured: its epoch times and its memory samples
    epochs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert res["train_time_per_epoch_s"] == pytest.approx(sum(e["train_time_s"] for e in epochs) / len(epochs))
    assert res["peak_memory_bytes"] == res["peak_rss_bytes"] - res["idle_rss_bytes"]
