from __future__ import annotations

from pathlib import Path

import pytest

from crossan.config import ConfigError, load_config, parse_override


def test_defaults_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("method: crossan\nmodalities: [text, image]\ntrain:\n  lr: 0.001\n  epochs: 3\n")
    cfg = load_config([f], ["train.epochs=5", "crossan.fusion=concat", "train.lr=1e-3", "cached=false"])
    assert cfg.method == "crossan" and cfg.modalities == ["text", "image"]
    assert cfg.train.epochs == 5 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.crossan.fusion == "concat" and cfg.cached is False
    assert cfg.user.dim == 64 and cfg.data.max_seq_len == 10 and cfg.seed == 12345


def test_override_value_parsing() -> None:
    assert parse_override("train.lr=1e-4") == ("train.lr", pytest.approx(1e-4))
    assert parse_override("modalities=[text,audio]") == ("modalities", ["text", "audio"])
    assert parse_override("modalities=text,audio") == ("modalities", "text,audio")
    assert load_config([], ["modalities=text,audio"]).modalities == ["text", "audio"]


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nope=1", "unknown config key 'nope'"),
    ("train.epochs=ten", "train.epochs: expected an integer"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("cached=maybe", "cached: expected true/false"),
    ("crossan.fusion=sum", "crossan.fusion: 'sum' is not one of"),
    ("method=bert4rec", "method: 'bert4rec' is not one of"),
    ("modalities=[text,smell]", "modalities: 'smell' is not one of"),
    ("train.metric=NDCG@50", "train.metric: 'NDCG@50'"),
    ("user.n_heads=3", "user.n_heads: 3 does not divide"),
    ("train", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config([], [override])
    assert needle in str(e.value)


def test_bad_file_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  batchsize: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.batchsize'"):
        load_config([f])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "none.yaml"])
