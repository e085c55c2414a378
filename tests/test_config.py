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
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown config key 'train\.batchsize'"):
        load_config([f])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "none.yaml"])
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder; --config takes a YAML file"):
        load_config([tmp_path])  # "does not exist", of a folder that does


@pytest.mark.parametrize("text", ["/data/ds #2", "2024.10", "010", "0x1F", "12:30", "on", "/data/a: b", "1e3"])
def test_string_overrides_arrive_as_typed(text: str) -> None:
    """A string key keeps the override's raw text; YAML would read these as a comment, number, bool or map."""
    assert load_config([], [f"data.path={text}"]).data.path == text
    assert load_config([], [f"data.path='{text}'"]).data.path == text  # quoted: unquoted as YAML does


def test_comma_lists_are_read_per_element() -> None:
    cfg = load_config([], ["eval.ks=5,10, 50", "modalities=text, image", "train.metric=HR@50"])
    assert cfg.eval.ks == [5, 10, 50] and cfg.modalities == ["text", "image"]


@pytest.mark.parametrize("override, key", [
    ("crossan.gate_temperature=0", "crossan.gate_temperature"), ("iisan.gate_temperature=-1", "iisan.gate_temperature"),
    ("crossan.dropout=1.5", "crossan.dropout"), ("iisan.dropout=1", "iisan.dropout"),
    ("crossan.bottleneck=0", "crossan.bottleneck"), ("iisan.side_dim=-5", "iisan.side_dim"),
    ("crossan.momef_temperature=0", "crossan.momef_temperature"), ("crossan.momef_top_k=-1", "crossan.momef_top_k"),
    ("crossan.load_balance_weight=-1", "crossan.load_balance_weight"), ("lora.rank=0", "lora.rank"),
    ("lora.dropout=1", "lora.dropout"), ("adapter.bottleneck=0", "adapter.bottleneck"),
    ("encoders.text.num_taps=0", "encoders.text.num_taps"), ("encoders.audio.audio_seconds=0", "audio_seconds"),
    ("encoders.text.max_text_len=0", "encoders.text.max_text_len"), ("encoders.batch_size=0", "encoders.batch_size"),
    ("crossan.init_std=.nan", "crossan.init_std"), ("crossan.momef_top_k=1", "load_balance_weight"),
])
def test_method_options_out_of_range_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], [override])


def test_top_1_routing_is_accepted_with_its_balance_loss() -> None:
    cfg = load_config([], ["crossan.momef_top_k=1", "crossan.load_balance_weight=0.01", "crossan.dropout=0"])
    assert cfg.crossan.momef_top_k == 1 and cfg.crossan.dropout == 0


@pytest.mark.parametrize("overrides, message", [
    (["crossan.fusion=concat", "crossan.momef_top_k=2"], "crossan.momef_top_k: acts on MOMEF's router only"),
    (["crossan.fusion=mean", "crossan.load_balance_weight=0.5"], "crossan.load_balance_weight: acts on MOMEF's"),
    (["crossan.fusion=mean", "crossan.momef_top_k=1"], "crossan.momef_top_k: acts on MOMEF's router only"),
    (["crossan.fusion=concat", "crossan.momef_temperature=0.5"], "crossan.momef_temperature: acts on MOMEF's"),
    (["crossan.fusion=concat", "crossan.momef_expert_mult=2"], "crossan.momef_expert_mult: acts on MOMEF's"),
    (["crossan.inputs_other_logit=-1"], "crossan.inputs_other_logit: acts with crossan.exchange=inputs only"),
    (["crossan.exchange=inputs", "crossan.inputs_other_logit=1e39"], r"crossan.inputs_other_logit: must be in \[-100"),
])
def test_options_that_would_change_nothing_or_overflow_are_refused(overrides: list[str], message: str) -> None:
    """MOMEF's options with ``fusion: concat`` or ``mean`` trained a model identical to one without them (and
    ``fusion=mean momef_top_k=1`` asked for a balance loss that would act on nothing); ``inputs_other_logit``
    without ``exchange: inputs`` likewise; and a logit of 1e39 passed the finiteness check, then failed as a
    float32 overflow traceback when the tower was built."""
    with pytest.raises(ConfigError, match=message.replace("crossan.", r"crossan\.")):
        load_config([], overrides)
    ok = load_config([], ["crossan.exchange=inputs", "crossan.inputs_other_logit=-4", "crossan.momef_top_k=2"])
    assert (ok.crossan.inputs_other_logit, ok.crossan.momef_top_k) == (-4, 2)


def test_a_section_with_every_key_commented_out_sets_nothing(tmp_path: Path) -> None:
    """``train:`` whose keys are all commented out reads as null in YAML; it was refused ("expected a mapping of
    TrainConfig fields, got None") where an empty section is what the file says. It now sets nothing, and keeps
    what an earlier file set."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("method: id\ntrain:\n  epochs: 3\n")
    second.write_text("train:\n  # epochs: 5\nuser:\n")
    cfg = load_config([first, second])
    assert (cfg.method, cfg.train.epochs, cfg.user.dim) == ("id", 3, load_config([]).user.dim)
