"""Quality on the built-in demo data (slow: run with `pytest -m slow`).

Small synthetic dataset, seed 0, offline preset (every encoder pretrained), the demo's training settings.
Margins: CROSSAN with all four modalities must beat every single-modality CROSSAN and the ID baseline on test
NDCG@10 by at least 5% relative; with one modality made dominant, MOMEF's mean router weight on that modality
must rise by at least 0.02 over its weight on the plain data (same seed). With the pretrained preset the
router weights text highest even when another modality is dominant (docs/results.md §10), so "highest on the
dominant modality" — this test's claim with the random encoders — no longer holds and is not asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crossan.cache import build_cache
from crossan.config import load_config
from crossan.data import prepare
from crossan.data.synth import generate
from crossan.reports.suite import load_suite
from crossan.trainer import train

pytestmark = pytest.mark.slow
MODS = ["text", "image", "video", "audio"]
MARGIN = 1.05


def _overrides(data_dir: Path) -> list[str]:
    return [f"data.path={data_dir}", "encoders.preset=offline", "device=cpu", *load_suite("demo").overrides]


def _run(data_dir: Path, out: Path, *extra: str) -> dict:
    return train(load_config([], [*_overrides(data_dir), *extra]), out, progress=False)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = generate(tmp_path_factory.mktemp("demo") / "data", size="small", seed=0, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    return data_dir


@pytest.fixture(scope="module")
def four_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("c4") / "run"
    return _run(demo_data, out, "method=crossan", f"modalities=[{','.join(MODS)}]")


@pytest.fixture(scope="module")
def four_modalities(four_run: dict) -> float:
    return four_run["test"]["NDCG@10"]


def test_four_modalities_beat_each_single_modality(demo_data: Path, four_modalities: float, tmp_path: Path) -> None:
    # measured 2026-11-30 (generator version 2, pretrained offline preset, seed 0; docs/results.md §6a, §8):
    # four 0.0248; text 0.0186, image 0.0179, video 0.0096, audio 0.0142
    for m in MODS:
        one = _run(demo_data, tmp_path / f"c-{m}", "method=crossan", f"modalities=[{m}]")["test"]["NDCG@10"]
        assert four_modalities > MARGIN * one, (m, four_modalities, one)


def test_four_modalities_beat_id(demo_data: Path, four_modalities: float, tmp_path: Path) -> None:
    # measured 2026-11-30 (pretrained offline preset, seed 0): four 0.0248, ID 0.0180; over seeds 0-2 (§6a)
    # 0.0241 ± 0.0016 against 0.0199 ± 0.0047, paired p = 0.04.
    # Version 1's small size (500 items, about 56 interactions each) gave 0.0338 vs 0.0334: too many
    # interactions per item for content to beat item IDs under the demo schedule.
    idr = _run(demo_data, tmp_path / "id", "method=id")["test"]["NDCG@10"]
    assert four_modalities > MARGIN * idr, (four_modalities, idr)


@pytest.mark.parametrize("dominant", ["image", "audio"])
def test_momef_weight_rises_on_the_dominant_modality(four_run: dict, tmp_path: Path, dominant: str) -> None:
    # measured 2026-11-30 (pretrained offline preset, seed 0): plain data text 0.414, image 0.221, video 0.197,
    # audio 0.168; image dominant: text 0.350, image 0.284, video 0.213, audio 0.153 (seeds 1-2: image 0.302,
    # 0.300 against 0.261, 0.257 on the plain data); audio dominant (seed 0): text 0.328,
    # audio 0.262, image 0.213, video 0.196
    data_dir = generate(tmp_path / "dom", size="small", seed=0, dominant=dominant, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    res = _run(data_dir, tmp_path / "run", "method=crossan", f"modalities=[{','.join(MODS)}]")
    weights, plain = res["tower"]["router_weight"], four_run["tower"]["router_weight"]
    assert weights[dominant] > plain[dominant] + 0.02, (dominant, weights, plain)
