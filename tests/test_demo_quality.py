"""Quality on the built-in demo data (slow: run with `pytest -m slow`).

Small synthetic dataset, seed 0, offline preset (every encoder pretrained), the demo's training settings.
Margins: CROSSAN with all four modalities must beat every single-modality CROSSAN and the ID baseline on test
NDCG@10 by at least 5% relative; with one modality made dominant, MOMEF's mean router weight on that modality
must rise by at least 0.02 over its weight on the plain data (same seeds; mean over three seeds for image). With the pretrained preset the
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
    # all four tests of this file passed on generator version 3 (2026-12-01, commit 75c42f7, 378 s); the figures
    # below were measured on version 2
    # measured 2026-12-01 (generator version 2, pretrained offline preset, default seed, loss over slots):
    # four 0.0276; text 0.0199, image 0.0191, video 0.0108, audio 0.0166 (2026-11-30 with the `unique` loss:
    # four 0.0248; text 0.0186, image 0.0179, video 0.0096, audio 0.0142)
    for m in MODS:
        one = _run(demo_data, tmp_path / f"c-{m}", "method=crossan", f"modalities=[{m}]")["test"]["NDCG@10"]
        assert four_modalities > MARGIN * one, (m, four_modalities, one)


def test_four_modalities_beat_id(demo_data: Path, four_modalities: float, tmp_path: Path) -> None:
    # measured 2026-12-01 (pretrained offline preset, default seed, loss over slots): four 0.0276, ID 0.0192;
    # the demo over seeds 0-2 (docs/results.md §6a) 0.0228 ± 0.0053 against 0.0195 ± 0.0011, paired p = 0.08
    # (with the `unique` loss, §6b: 0.0241 ± 0.0016 against 0.0199 ± 0.0047, p = 0.04).
    # Version 1's small size (500 items, about 56 interactions each) gave 0.0338 vs 0.0334: too many
    # interactions per item for content to beat item IDs under the demo schedule.
    idr = _run(demo_data, tmp_path / "id", "method=id")["test"]["NDCG@10"]
    assert four_modalities > MARGIN * idr, (four_modalities, idr)


@pytest.mark.parametrize(("dominant", "extra_seeds"), [("image", (1, 2)), ("audio", ())])
def test_momef_weight_rises_on_the_dominant_modality(four_run: dict, demo_data: Path, tmp_path: Path,
                                                     dominant: str, extra_seeds: tuple[int, ...]) -> None:
    """The router weight of the dominant modality, dominant data against plain data, same seeds: its mean rise
    over the seeds must reach 0.02. Image is averaged over three seeds (the default seed, 1, 2): with the loss
    over slots its single-seed rise varies from +0.016 to +0.076 (docs/results.md §10a: +0.031, +0.038, +0.076 at
    seeds 0-2, mean +0.048; the run-to-run spread of one weight is about 0.016), so one seed would test noise.
    This test, 2026-12-01: +0.016 at the default seed alone (failed the old one-seed form); over three seeds
    +0.024, +0.038, +0.077, mean +0.046 (passed).
    Audio's rise is larger (+0.075 at the default seed with slots, 2026-12-01; +0.094 with the earlier `unique`
    loss, §10b) and keeps one seed."""
    data_dir = generate(tmp_path / "dom", size="small", seed=0, dominant=dominant, progress=False)
    cfg = load_config([], _overrides(data_dir))
    build_cache(cfg, prepare(cfg.data), MODS, progress=False)
    mods = f"modalities=[{','.join(MODS)}]"
    rises = []
    for seed in (None, *extra_seeds):
        pin = () if seed is None else (f"seed={seed}",)
        plain = four_run if seed is None else _run(demo_data, tmp_path / f"plain-{seed}", "method=crossan", mods, *pin)
        res = _run(data_dir, tmp_path / f"run-{seed}", "method=crossan", mods, *pin)
        rises.append(res["tower"]["router_weight"][dominant] - plain["tower"]["router_weight"][dominant])
    assert sum(rises) / len(rises) > 0.02, (dominant, rises)
