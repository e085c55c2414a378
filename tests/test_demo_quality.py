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


def test_four_modalities_beat_one_and_id(tmp_path: Path) -> None:
    data_dir = generate(tmp_path / "demo", size="small", seed=0, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    four = _run(data_dir, tmp_path / "c4", "method=crossan", f"modalities=[{','.join(MODS)}]")["test"]["NDCG@10"]
    idr = _run(data_dir, tmp_path / "id", "method=id")["test"]["NDCG@10"]
    singles = {m: _run(data_dir, tmp_path / f"c-{m}", "method=crossan", f"modalities=[{m}]")["test"]["NDCG@10"]
               for m in MODS}
    assert four > MARGIN * idr, (four, idr)
    for m, v in singles.items():
        assert four > MARGIN * v, (m, four, v)


@pytest.mark.parametrize("dominant", ["image", "audio"])
def test_momef_weights_the_dominant_modality(tmp_path: Path, dominant: str) -> None:
    data_dir = generate(tmp_path / "dom", size="small", seed=0, dominant=dominant, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    res = _run(data_dir, tmp_path / "run", "method=crossan", f"modalities=[{','.join(MODS)}]")
    weights = res["tower"]["router_weight"]
    assert max(weights, key=weights.get) == dominant, weights
