"""Checkpoints and ``config:`` specs that cannot work are refused naming the key, folder or file: a damaged
weights file, weights that do not fit config.json, a tokenizer past the vocabulary, sizes ≤ 0 and the like."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from crossan.config import EncoderSpec
from crossan.encoders import EncoderSpecError, build_encoder, describe_backbone, preset_specs

TINY = preset_specs("tiny")


def _text_folder(tmp_path: Path, name: str = "bert") -> Path:
    """The tiny preset's text model and tokenizer saved as a checkpoint folder."""
    built = build_encoder("text", TINY["text"])
    folder = tmp_path / name
    built.model.save_pretrained(folder)
    built.tokenizer.save_pretrained(folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _load(folder: Path, modality: str = "text"):
    return build_encoder(modality, dataclasses.replace(TINY[modality], model=str(folder)))


def test_a_truncated_weights_file_is_refused_naming_the_key_and_the_file(tmp_path: Path) -> None:
    """A cut-off model.safetensors ended in safetensors' "Error while deserializing header" traceback."""
    folder = _text_folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(EncoderSpecError, match=rf"^encoders.text.model='{folder}': its weights cannot be read "
                                               rf"\({weights}: "):
        _load(folder)


def test_weights_of_another_shape_than_config_json_are_refused_naming_the_folder(tmp_path: Path) -> None:
    """hidden_size edited in config.json: transformers 5 raised its own RuntimeError ("You set
    ignore_mismatched_sizes to False") before crossan's check of wrong-shape weights could name the folder."""
    folder = _text_folder(tmp_path)
    _edit_config(folder, hidden_size=32, intermediate_size=64)
    with pytest.raises(EncoderSpecError, match=rf"^{folder}: \d+ weights have the wrong shape for its config.json "
                                               r"\(.* \[\d+(, \d+)?\] \(config: \[\d+(, \d+)?\]\)"):
        _load(folder)


def test_a_checkpoint_with_more_layers_than_its_config_is_refused(tmp_path: Path) -> None:
    """num_hidden_layers lowered in config.json: the extra layer's weights were dropped in silence. A task
    head's weights (a *ForImageClassification checkpoint loaded as the base model) are still accepted."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = _text_folder(tmp_path)
    _edit_config(folder, num_hidden_layers=1)
    with pytest.raises(EncoderSpecError, match=rf"^{folder}: \d+ weights of the checkpoint have no place in the "
                                               r"model .*\(encoder\.layer\.1\."):
        _load(folder)
    head = tmp_path / "vitcls"
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=32, patch_size=8,
                                         num_labels=3)).save_pretrained(head)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(head)
    assert not _load(head, "image").random_init


def test_an_image_folder_without_its_processor_names_the_key(tmp_path: Path) -> None:
    """A ViT folder without preprocessor_config.json gave transformers' message about the hub."""
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    with pytest.raises(EncoderSpecError, match=rf"^encoders\.image\.model='{folder}': its image processor cannot be "
                                               r"loaded \(no preprocessor_config\.json there\?\)"):
        build_encoder("image", EncoderSpec(model=str(folder), num_taps=3))


def test_extra_layers_under_a_task_checkpoints_prefix_are_refused_and_stored_buffers_are_not(tmp_path: Path) -> None:
    """A BertForMaskedLM checkpoint names its weights ``bert.encoder.…``: with more layers than its config.json
    they passed the check, which read ``bert`` as a task head. A stored ``token_type_ids`` buffer (no weight) of
    a base checkpoint was refused as unexpected."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    folder = _text_folder(tmp_path)
    config = BertConfig.from_pretrained(folder)
    config.num_hidden_layers = 3
    masked = tmp_path / "masked"
    BertForMaskedLM(config).save_pretrained(masked)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (folder / name).is_file():
            (masked / name).write_bytes((folder / name).read_bytes())
    _edit_config(masked, num_hidden_layers=2)
    with pytest.raises(EncoderSpecError, match=r"weights of the checkpoint have no place in the model .*"
                                               r"\(bert\.encoder\.layer\.2\."):
        _load(masked)
    weights = load_file(folder / "model.safetensors")
    weights["embeddings.token_type_ids"] = torch.zeros(1, 16, dtype=torch.long)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert not _load(folder).random_init


def test_a_config_spec_vocabulary_smaller_than_the_builtin_tokenizer_is_refused() -> None:
    """``config:bert:…,vocab_size=50`` without ``tokenizer=`` read titles with crossan's built-in vocabulary of
    more ids and failed at the first title (IndexError in torch's embedding)."""
    spec = dataclasses.replace(TINY["text"], model=TINY["text"].model + ",vocab_size=50")
    with pytest.raises(EncoderSpecError, match=r"the tokenizer in crossan's built-in vocabulary has \d+ token ids but "
                                               r"the model's vocab_size is 50"):
        build_encoder("text", spec)


def test_a_tokenizer_with_ids_past_the_vocabulary_is_refused(tmp_path: Path) -> None:
    """A tokenizer larger than the model's vocab_size passed, and the cache failed at the first title with a
    high id (IndexError in torch's embedding); both a checkpoint's and a config spec's tokenizer= folder."""
    folder = _text_folder(tmp_path)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    _edit_config(folder, vocab_size=vocab - 10)
    (folder / "model.safetensors").unlink()
    from transformers import BertConfig, BertModel

    BertModel(BertConfig.from_pretrained(folder)).save_pretrained(folder)  # weights of that vocabulary
    with pytest.raises(EncoderSpecError, match=rf"^encoders.text.model='{folder}': the tokenizer in {folder} has "
                                               rf"{vocab} token ids but the model's vocab_size is {vocab - 10}"):
        _load(folder)
    spec = TINY["text"].model + f",tokenizer={folder},vocab_size={vocab - 10}"
    with pytest.raises(EncoderSpecError, match=rf"has {vocab} token ids but the model's vocab_size is {vocab - 10}"):
        build_encoder("text", dataclasses.replace(TINY["text"], model=spec))


@pytest.mark.parametrize(("modality", "extra", "detail"), [
    ("image", "hidden_size=0", "hidden_size=0; a size or count must be a positive integer"),
    ("image", "hidden_size=-64", "hidden_size=-64; a size or count must be a positive integer"),
    ("image", "patch_size=0", "patch_size=0; a size or count must be a positive integer"),
    ("audio", "num_mel_bins=0", "num_mel_bins=0; a size or count must be a positive integer"),
    ("text", "num_attention_heads=-2", "num_attention_heads=-2; a size or count"),
    ("image", "num_hidden_layers=0", "0 layers (num_hidden_layers must be at least 1"),
    ("video", "num_hidden_layers=0", "0 layers (num_hidden_layers must be at least 1"),
    ("image", "patch_size=64", "patch_size=64 is larger than image_size=32"),
    ("video", "patch_size=64", "patch_size=64 is larger than image_size=32"),
    ("image", "seed=abc", "seed='abc' is not an integer"),
    ("image", "seed=-1", "seed=-1 is not an integer"),
    ("image", "hidden_size=63,num_attention_heads=2", "hidden_size=63 is not a multiple of the number of attention "
                                                      "heads (num_attention_heads=2)"),
])
def test_config_spec_values_that_cannot_work_are_refused_naming_the_key(modality: str, extra: str,
                                                                        detail: str) -> None:
    """Sizes ≤ 0 gave ZeroDivisionError or negative-dimension tracebacks; zero layers, a patch larger than the
    image and a ViT width the heads do not divide failed only at the first batch (or built in silence); a
    non-integer seed said "invalid literal for int()" naming no key."""
    spec = dataclasses.replace(TINY[modality], model=TINY[modality].model + "," + extra)
    with pytest.raises(EncoderSpecError) as err:
        build_encoder(modality, spec)
    message = str(err.value)
    assert message.startswith(f"encoders.{modality}.model='config:") and detail in message, message


def test_a_tokenizer_key_that_is_no_folder_is_refused_naming_the_key(tmp_path: Path) -> None:
    """tokenizer=/nonexistent was tried as a hub name ("Repo id must use alphanumeric chars")."""
    for value, detail in ((tmp_path / "nowhere", "no such folder"), (tmp_path / "vocab.txt", "is a file")):
        if detail == "is a file":
            value.write_text("[PAD]\n")
        spec = EncoderSpec(model=TINY["text"].model + f",tokenizer={value}")
        with pytest.raises(EncoderSpecError, match=rf"^encoders.text.model='config:.*: tokenizer={value}:? {detail}"):
            describe_backbone("text", spec)


def test_a_model_key_naming_a_file_says_it_wants_the_folder(tmp_path: Path) -> None:
    """encoders.text.model=/path/model.safetensors was reported as a hub problem."""
    weights = _text_folder(tmp_path) / "model.safetensors"
    with pytest.raises(EncoderSpecError, match=rf"^encoders.text.model='{weights}' is a file; the key takes the "
                                               "checkpoint's folder"):
        describe_backbone("text", EncoderSpec(model=str(weights)))


def test_an_efficientnet_file_that_is_no_state_dict_is_refused_naming_it(tmp_path: Path) -> None:
    """efficientnet-lite0:FILE with a text file ended in a KeyError from torch's weights_only unpickler."""
    junk = tmp_path / "weights.pth"
    junk.write_text("not a checkpoint\n" * 10)
    with pytest.raises(EncoderSpecError, match=rf"^encoders.image.model='efficientnet-lite0:{junk}': {junk}: not a "
                                               "torch state_dict file"):
        build_encoder("image", EncoderSpec(model=f"efficientnet-lite0:{junk}"))
