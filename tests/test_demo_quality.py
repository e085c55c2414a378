"""Quality on the built-in demo data (slow: run with `pytest -m slow`).

Small synthetic dataset, seed 0, offline preset, the demo's training settings. Margins: CROSSAN with all four
modalities must beat every single-modality CROSSAN and the ID baseline on test NDCG@10 by at least 5% relative;
with one modality made dominant, MOMEF's mean router weight must be highest on that modality.
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
def four_modalities(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    out = tmp_path_factory.mktemp("c4") / "run"
    return _run(demo_data, out, "method=crossan", f"modalities=[{','.join(MODS)}]")["test"]["NDCG@10"]


def test_four_modalities_beat_each_single_modality(demo_data: Path, four_modalities: float, tmp_path: Path) -> None:
    # measured 2026-11-27 (generator version 2): four 0.0259; text 0.0189, image 0.0137, video 0.0055, audio 0.0163
    for m in MODS:
        one = _run(demo_data, tmp_path / f"c-{m}", "method=crossan", f"modalities=[{m}]")["test"]["NDCG@10"]
        assert four_modalities > MARGIN * one, (m, four_modalities, one)


def test_four_modalities_beat_id(demo_data: Path, four_modalities: float, tmp_path: Path) -> None:
    # measured 2026-11-27 (generator version 2, 1,000 items): four 0.0259, ID 0.0164; seed 1: 0.0221 vs 0.0183.
    # Version 1's small size (500 items, about 56 interactions each) gave 0.0338 vs 0.0334: too many
    # interactions per item for content to beat item IDs under the demo schedule.
    idr = _run(demo_data, tmp_path / "id", "method=id")["test"]["NDCG@10"]
    assert four_modalities > MARGIN * idr, (four_modalities, idr)


@pytest.mark.parametrize("dominant", ["image", "audio"])
def test_momef_weights_the_dominant_modality(tmp_path: Path, dominant: str) -> None:
    # measured 2026-11-27 (generator version 2): image dominant: image 0.332, text 0.301, audio 0.191, video 0.176;
    # audio dominant: audio 0.336, text 0.289, image 0.217, video 0.158
    data_dir = generate(tmp_path / "dom", size="small", seed=0, dominant=dominant, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    res = _run(data_dir, tmp_path / "run", "method=crossan", f"modalities=[{','.join(MODS)}]")
    weights = res["tower"]["router_weight"]
    assert max(weights, key=weights.get) == dominant, weights
