"""Typed run configuration: dataclasses with documented defaults, read from YAML plus ``key=value`` overrides.

Precedence (later wins): dataclass defaults < ``--config`` YAML files in order < ``key=value`` overrides.
Keys are dotted paths (``train.lr=1e-3``, ``crossan.fusion=concat``); a handful of often-used keys live at
the top level (``method``, ``modalities``, ``cached``, ``seed``, ``device``, ``precision``). Unknown keys and
values of the wrong type are errors that name the key, and the file and line that set it (range and
cross-field checks included). A key repeated in one YAML mapping is an error (YAML would keep the last one silently).

Values read alike from a file and from the command line: a number key takes ``1e-3`` (YAML 1.1 reads it as
a string) and reads ``010`` as decimal 10 (not octal 8); a string key refuses an unquoted value YAML reads
as a number, boolean or date (``path: 2024.10`` would become ``2024.1``): quote it. On the command line a
string key keeps the text as typed (``data.path=2024.10``), and ``null`` is null there as in a file. YAML
1.1's base-60 numbers (``1:30``) are text, which a number key refuses. A list key takes ``a,b`` on the command
line (each piece of a list of strings as typed, as a string key) or ``[a, b]``; one value where a list is
wanted is a list of one (``eval.ks=10``; a quoted string in a file, commas and all).

Each method's own options are a section named after it (``cfg.crossan``, ``cfg.lora``); the sections are
built from the table of methods (:mod:`crossan.methods`), which this module imports downward. Reading a
configuration imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

import crossan.methods as _methods_module
from crossan.config_yaml import YAMLLoader, read_yaml_file
from crossan.errors import ConfigError
from crossan.methods import discover_plugins, get_method, option_sections
from crossan.towers.options import range_text

__all__ = ["CacheConfig", "Config", "ConfigError", "CoreConfig", "DataConfig", "EncoderSpec", "EncodersConfig",
           "EvalConfig", "TrainConfig", "UserEncoderConfig", "add_method_section", "config_from_dict",
           "load_config", "metric_names",
           "parse_override", "read_yaml_file", "save_config", "to_dict", "validate"]


MAX_SEQ_LEN = 10_000
"""The largest ``data.max_seq_len`` accepted (IISAN uses 10; SASRec's long-sequence settings a few hundred)."""


# --------------------------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """How interactions and the item catalogue are read and split (METHOD.md §2)."""

    path: str = ""
    """Dataset folder (or a single .csv file). Set by ``--data``."""
    format: Literal["auto", "iisan", "atomic", "csv"] = "auto"
    """Layout: ``iisan`` (users.tsv / *_pairs.tsv + items.tsv), ``atomic`` (RecBole .inter/.item), ``csv``."""
    min_interactions: int = 5
    """Users with fewer interactions are dropped."""
    max_seq_len: int = 10
    """Input window length L; each user keeps the last L + 3 items. At most :data:`MAX_SEQ_LEN` (self-attention
    over the window costs L² per user)."""
    on_bad_rows: Literal["error", "drop"] = "error"
    """``error``: a malformed row stops with file and line; ``drop``: such rows are skipped, counted, reported."""
    on_unknown_items: Literal["error", "drop"] = "error"
    """An interaction naming an item missing from the catalogue: stop (``error``) or skip and count (``drop``)."""
    text_fields: list[str] = field(default_factory=list)
    """RecBole ``.item`` files: which columns make the item text (empty: every text-like column but the id).
    Other layouts have one title column; naming columns there is an error."""
    media_roots: list[str] = field(default_factory=list)
    """Extra folders that media paths may point into (absolute, or relative to the dataset root). By default
    every media path must lie inside the dataset root after resolving symlinks; one that does not is an
    error naming item, column and path (with ``cache.on_corrupt=missing``: that item lacks the modality)."""
    max_text_chars: int = 2000
    """Item text (title) is cut to this many characters when it is read, before any tokeniser sees it."""


@dataclass
class UserEncoderConfig:
    """SASRec-style causal Transformer over item embeddings (METHOD.md §8)."""

    dim: int = 64
    """d: width of the user encoder and of every item embedding the towers produce (the scores are dot
    products in this space)."""
    n_layers: int = 2
    """Transformer blocks of the user encoder."""
    n_heads: int = 2
    """Attention heads per block (must divide ``dim``)."""
    ffn_mult: int = 4
    """Feed-forward width of each block, as a multiple of ``dim``."""
    dropout: float = 0.1
    """Dropout probability of the user encoder (where it acts, attention weights included: ``variant``)."""
    variant: Literal["crossan", "iisan_official"] = "crossan"
    """Block details (the same for every method, so comparisons stay fair). ``crossan``: biases on Q/K/V and
    the attention output, GELU, dropout also inside the feed-forward, LayerNorm eps 1e-5, weights
    N(0, 0.02²), padding positions zeroed. ``iisan_official`` (IISAN's official SASRec): no bias on Q/K/V
    and output, ReLU, eps 1e-6, Xavier-normal weights, dropout after the attention output and the
    feed-forward output only, padding positions left as embedded (masked as attention keys either way). Both
    also drop the embedded input and the attention weights. See docs/method.md."""


@dataclass
class TrainConfig:
    """Optimisation and model selection (defaults follow IISAN, METHOD.md §9)."""

    epochs: int = 100
    """Epochs at most (early stopping: ``patience``); 0 tests the initial weights (an untrained baseline)."""
    batch_size: int = 64
    """Training sequences per step (and, with the in-batch loss, the candidate set each step ranks against)."""
    lr: float = 2e-4
    """Learning rate of the recommender: user encoder, ID table, projection heads."""
    lr_adapter: float = 1e-4
    """Side adapters (IISAN/CROSSAN SANBs and gates)."""
    lr_peft: float = 4e-4
    """Adapter / LoRA weights inside the backbones."""
    lr_backbone: float = 1e-4
    """Backbone weights under full fine-tuning."""
    weight_decay: float = 0.0
    """Adam's L2 weight decay, on every parameter group (0: none, as IISAN)."""
    loss: Literal["inbatch", "bce"] = "inbatch"
    """``inbatch``: in-batch softmax with popularity correction; ``bce``: one sampled negative per position
    (never one of the user's window items, unless that window holds every item)."""
    negatives: Literal["unique", "slots"] = "slots"
    """In-batch candidates. ``slots`` (default, as IISAN's official code): every slot of the batch's
    sequences (L + 1 per user), so an item is a negative as often as it occurs in the batch, in proportion to
    its popularity as the log-popularity correction assumes. ``unique``: each distinct item of the batch once
    (crossan's default before 2026-12-01; it lost on validation for IISAN and CROSSAN on Amazon Scientific,
    docs/results.md §11c). Either way each distinct item is embedded once."""
    pop_smoothing: float = 1.0
    """Popularity correction ``log P(j)``, ``P(j) = (c_j + s) / (Σ c + s·N)`` from training counts c: ``1``
    add-one (items unseen in training stay finite), ``0`` unsmoothed as in IISAN's official code (an item
    with no count gets log P = 0; it can only appear as padding)."""
    patience: int = 10
    """Stop after this many validations without a better validation metric (epochs when ``eval_every`` is 1,
    the default; with ``eval_every: 3`` a patience of 10 waits 30 epochs)."""
    metric: str = "NDCG@10"
    """Validation metric that selects the best epoch (any key of the metrics table)."""
    eval_every: int = 1
    """Validate every this many epochs (and after the last); the best epoch is chosen among those validated."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: off)."""
    max_steps_per_epoch: int = 0
    """Cut each epoch after this many steps (0: full epoch). For smoke runs and benchmarks."""
    compile: bool | Literal["auto"] = "auto"
    """IISAN and CROSSAN training on a CPU: run the side network (gates, exchange, SANBs of every depth, and
    their backward) through ``torch.compile`` (inductor, which fuses the element-wise passes between the
    matrix products; needs a C++ compiler). The first step of a process compiles (10–45 s on the CPUs
    measured), and that time counts in the first epoch's (results.json's ``train_time_per_epoch_s`` averages
    every epoch's); evaluation and other devices stay eager. ``auto`` (default) compiles where the run takes
    at least ``COMPILE_AUTO_MIN_STEPS`` (10,000) training steps on a CPU with a C++ compiler — the fewest
    its epochs, patience and ``eval_every`` allow, so the compilation is at most a few per cent of the
    run — and stays eager otherwise (every small run: tests, the demo). results.json's ``train_compiled``
    says what it resolved to. ``true`` compiles any run (and fails naming this key without a C++
    compiler); ``false`` never does. Per step, compiled was up to 24% faster than eager (an AMX CPU in bf16,
    both methods, docs/results.md §3u) and 0–15% on the AMD CPUs of §3g–§3i and §3m–§3o (more for IISAN than
    for CROSSAN; where it gained nothing, the two differed by less than the runs' spread)."""

    malloc: Literal["auto", "retain", "system"] = "auto"
    """The C allocator while training, or building a cache, on a CPU under glibc (Linux). ``retain``: memory
    freed by a step stays in the process for the next (no ``mmap``'d blocks, no trimming;
    :func:`crossan.utils.retain_freed_memory`), where glibc's defaults return large blocks to the system and
    take fresh, zero-filled pages at every step (700–2,100 page faults per CROSSAN step at paper sizes, against
    20–30 retained; docs/results.md §3h) and at every encoder forward (EfficientNet-Lite0's 224 px feature
    maps: a bf16 forward of 32 images 160 → 100 ms, §3v). ``system``: glibc's defaults. ``auto``: ``retain``
    on a CPU, ``system`` otherwise. It applies to the whole process from the start of training or of
    ``crossan cache`` on, and resident memory then stays near its peak (the peak itself is what it was); the
    values computed are the same either way. results.json's ``malloc`` says which was in effect."""


@dataclass
class EvalConfig:
    """Full-ranking evaluation (METHOD.md §2)."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Cut-offs K of HR@K and NDCG@K (positive, distinct)."""
    batch_size: int = 512
    """Users scored against the whole catalogue at once (memory: batch × items scores); no effect on results."""
    mask_history: bool = True
    """``true`` (IISAN's rule): every item of the user's history is removed from the ranking, a target that
    repeats one included — it can then never be a hit. ``false``: nothing is masked (repeat-consumption data).
    Either way no rule depends on the target's identity; results.json reports how many targets repeat."""


@dataclass
class EncoderSpec:
    """One frozen encoder: which checkpoint, how its inputs are prepared, which layers are tapped.

    Size fields left at 0 take the model's own value; for a ``config:`` model a non-zero value sizes the
    model (see ``crossan.encoders.backbones``).
    """

    model: str = ""
    """Hub name or local folder; ``config:FAMILY[:k=v,...]`` builds a random-init model from a config."""
    num_taps: int = 7
    """K evenly spaced hidden states, including the embedding output and the last layer."""
    pooling: Literal["auto", "cls", "mean"] = "auto"
    """``auto``: CLS for models with one (BERT, ViT, AST), masked mean otherwise (VideoMAE, Whisper)."""
    max_text_len: int = 32
    """Text: tokens kept per title (truncation), special tokens included."""
    image_size: int = 0
    """Images/frames: resize to this size (0: the processor's default; a processor that centre-crops keeps its
    ratio of resize to crop). ViT checkpoints interpolate their position embeddings for another size;
    VideoMAE checkpoints must keep theirs (set to it, a folder whose processor makes frames of another size
    is fed that size)."""
    num_frames: int = 0
    """Video: frames sampled per clip (0: the model's ``num_frames``; a checkpoint must keep its own)."""
    frame_sampling: Literal["uniform", "middle"] = "uniform"
    """Video: ``uniform`` takes the centres of equal segments of the clip's frame sequence (by frame index,
    not by time: a variable-frame-rate clip is sampled more densely where it has more frames); ``middle``
    consecutive frames around the clip's middle frame. Short clips repeat frames."""
    audio_seconds: float = 10.0
    """Audio: the waveform is cut or zero-padded to this duration."""
    sample_rate: int = 0
    """Resample audio to this rate (0: the feature extractor's rate)."""


@dataclass
class EncoderOverrides:
    """A run's settings of one modality's encoder, on top of the preset (``crossan.encoders.resolve_specs``).

    Every key is an :class:`EncoderSpec` key. Unset (``null``, the default) takes the preset's value, or
    :class:`EncoderSpec`'s default when ``model`` names a checkpoint; a value given is used, even one equal
    to :class:`EncoderSpec`'s default (``encoders.audio.audio_seconds=10`` under a preset of 5 s gives 10 s).
    """

    model: str = ""
    num_taps: int | None = None
    pooling: Literal["auto", "cls", "mean"] | None = None
    max_text_len: int | None = None
    image_size: int | None = None
    num_frames: int | None = None
    frame_sampling: Literal["uniform", "middle"] | None = None
    audio_seconds: float | None = None
    sample_rate: int | None = None

    def given(self) -> dict[str, Any]:
        """The keys this run sets (a non-empty ``model``, and every other key that is not null)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) not in (None, "")}


@dataclass
class EncodersConfig:
    """The frozen encoders per modality. ``preset`` fills the specs; the keys a run gives override it."""

    preset: Literal["paper", "offline", "offline-random", "tiny"] = "offline"
    """Which encoder per modality (``crossan encoders --preset NAME`` lists them; docs/method.md §3).
    ``offline``: pretrained weights that ship in packages (MiniLM text, EfficientNet-Lite0 image and video
    frames, Whisper tiny.en audio); ``offline-random``: the real MiniLM for text and randomly initialised
    small ViT, VideoMAE and AST models for the media; ``paper``: the paper's checkpoints (BERT, ViT,
    VideoMAE, AST by hub name: they need the hub or local copies); ``tiny``: random 2-layer models for
    tests."""
    text: EncoderOverrides = field(default_factory=EncoderOverrides)
    image: EncoderOverrides = field(default_factory=EncoderOverrides)
    video: EncoderOverrides = field(default_factory=EncoderOverrides)
    audio: EncoderOverrides = field(default_factory=EncoderOverrides)
    batch_size: int = 32
    """Items per forward pass when caching or encoding live."""


@dataclass
class CacheConfig:
    """Where the layer-state cache lives and how bad media are handled while building it."""

    dir: str = ""
    """Cache folder (empty: ``$CROSSAN_CACHE_DIR`` or ``~/.cache/crossan``, then
    ``<dataset folder name>-<item fingerprint>/<preset>``, or ``<preset>-<hash>`` for a modality whose encoder
    settings the run changes; the dataset folder itself is never written)."""
    standardize: bool = True
    """Side networks and frozen features standardise each tapped state dimension over the items (fixed
    mean/std, saved with the weights): frozen encoders' states share a large offset across items."""
    standardize_min_rel_std: float = 0.05
    """With ``standardize``: a dimension whose std over the items is below this fraction of its RMS is zeroed
    instead of scaled up (0: never zero a dimension). See docs/results.md §4 for the measured effect."""
    on_corrupt: Literal["error", "missing"] = "error"
    """A corrupt or unreadable media file (a referenced file that does not exist included) stops the build
    naming item and path (``error``), or marks that item's modality missing and counts it (``missing``)."""
    memory_limit_gb: float = 4.0
    """``open_features`` loads cached states into memory when all asked-for modalities together take
    at most this many GiB; larger caches stay memory-mapped."""
    train_table: bool = False
    """IISAN and CROSSAN in training under bf16 (``precision``): keep the standardised side inputs of every
    item as one tap-major table in the compute dtype (as many bytes as the in-memory fp16 cache) and read a
    batch with one ``index_select``, instead of gathering, casting and standardising fp16 rows at every step.
    The inputs are bit-identical either way. Off by default: the table doubles the memory the cached states
    take (peak memory is one of the efficiency figures), and since a batch reads an in-memory cache block by
    block through a small scratch buffer it gains nothing measurable (docs/results.md §3d, §3g). Only for an
    in-memory cache; evaluation (fp32) never uses it."""
    prefetch: Literal["ahead", "on_demand"] = "ahead"
    """While building: ``ahead`` (default) reads (decodes, resizes, tokenises) the next batch in a thread while the
    current one runs through the encoder; ``on_demand`` reads each batch when it is needed, leaving every core to
    the forward. On a 2-core CPU a bf16 EfficientNet image build was within 3% either way, an audio build 10%
    faster ``ahead``, a video build the same either way (docs/results.md §3v, §3w; before 0.1.22, whose image
    reading runs no torch operation, images were 10–14% faster ``on_demand``). The states are the same bytes
    either way."""
    on_device: bool = True
    """An in-memory cache goes to the training device (fastest on a GPU). ``false`` keeps it in host memory
    and moves only each batch's rows, so the GPU holds nothing but the side network's training state."""


@dataclass
class CoreConfig:
    """The run-level part of a configuration: everything but the methods' option sections."""

    method: str = "id"
    """Item tower: a name of the table in :mod:`crossan.methods` (built in: id | frozen | iisan | crossan | fft |
    adapter | lora; plugins add rows)."""
    modalities: list[str] = field(default_factory=lambda: ["text"])
    """Modalities the item tower reads (subset of text, image, video, audio)."""
    cached: bool = True
    """Side networks and frozen features read the layer-state cache; false runs the encoders live."""
    seed: int = 12345
    """Training seed, an integer in [0, 2**32) (the epoch streams ``seed * 1000003 + epoch`` fit in int64)."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N`` (a GPU by index), or ``mps``
    (Apple GPUs; untested here, float32 only: ``precision=auto`` is fp32 there and ``bf16`` is refused)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision of the frozen encoders' forward (cache building, live encoding) and of every method's
    training step. ``bf16``: matrix products in bfloat16 under ``torch.autocast``; weights, gradients,
    optimiser state and losses stay float32, evaluation and serving run in float32, the cache stays float16.
    ``auto``: bf16 on CPUs with AVX-512 BF16 or AMX (``/proc/cpuinfo`` flags ``avx512_bf16``/``amx_bf16``)
    and on CUDA GPUs that support bf16, fp32 elsewhere (see ``crossan.precision``). Each checkpoint records
    the dtype a run's steps ran at, and ``--resume`` refuses to continue at another (``auto`` on other
    hardware): ``bf16`` or ``fp32`` then forces the dtype the run started with."""
    data: DataConfig = field(default_factory=DataConfig)
    user: UserEncoderConfig = field(default_factory=UserEncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


def _section_default(self: Any, name: str) -> Any:
    """``Config.__getattr__`` (asked only for an attribute the instance lacks): the default of a method section
    added after the instance was made (:func:`add_method_section`), stored on it; AttributeError otherwise
    (for the run-level fields too: an instance that lacks one is broken, not old)."""
    spec = type(self).__dataclass_fields__.get(name)
    if spec is None or name in CoreConfig.__dataclass_fields__ or spec.default_factory is dataclasses.MISSING:
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
    value = spec.default_factory()
    setattr(self, name, value)
    return value


def _make_config(rows: list[Any]) -> type:
    return dataclasses.make_dataclass(
        "Config",
        [(row.name, row.options, field(default_factory=row.options)) for row in rows],
        bases=(CoreConfig,),
        namespace={"__doc__": "A complete run configuration: :class:`CoreConfig` plus one options section per "
                              "method of :mod:`crossan.methods` with options (built in: ``id``, ``frozen``, "
                              "``iisan``, ``crossan``, ``fft``, ``adapter``, ``lora``; plugins add theirs), each "
                              "of that method's options dataclass.",
                   "__module__": __name__, "__getattr__": _section_default},
    )


def check_options_class(row: Any) -> None:
    """:class:`ConfigError` naming ``NAME.field`` unless the options dataclass of method row ``row`` works as a
    config section: every field has a default, its type annotations resolve, and its defaults read back through
    the config reader (a type it cannot read, ``tuple`` say, would make every saved config unreadable)."""
    name, options = row.name, row.options
    try:
        hints = _hints(options)
    except Exception as e:  # noqa: BLE001 - a NameError of an annotation, most often
        raise ConfigError(f"method {name!r}: the type annotations of {options.__name__} do not resolve "
                          f"({type(e).__name__}: {e})") from None
    try:
        default = options()
    except TypeError as e:
        raise ConfigError(f"method {name!r}: every field of {options.__name__} needs a default ({e})") from None
    for key in hints:
        try:
            _coerce(getattr(default, key), hints[key], f"{name}.{key}")
        except ConfigError as e:
            raise ConfigError(f"method {name!r}: the default of {e} (the config reader must read back what a "
                              "run saves)") from None


Config = _make_config(option_sections())


def add_method_section(row: Any) -> None:
    """Make the options of a method row registered after this module was imported (a plugin's) a section of
    :class:`Config`: the class is rebuilt in place (its fields, ``__init__``, ``__repr__``, ``__eq__``), so that
    every reference to it, ``isinstance`` and pickling keep working, and an instance made before reads the new
    section's defaults (:func:`_section_default`). The options are checked first
    (:func:`check_options_class`). Called by :func:`crossan.methods.register_method` (through its
    ``_late_section_hooks``), which takes the row back out of the table when this raises."""
    if row.name in Config.__dataclass_fields__:
        raise ConfigError(f"method {row.name!r}: Config already has a field of that name")
    check_options_class(row)
    rebuilt = _make_config(option_sections())
    # the config reader takes a section's keys from dataclasses.fields (see _hints), not from annotations,
    # which Python 3.14 keeps elsewhere; they are copied too for typing.get_type_hints's sake
    for attr in ("__dataclass_fields__", "__dataclass_params__", "__init__", "__repr__", "__eq__",
                 "__match_args__", "__annotations__"):
        if attr in rebuilt.__dict__:
            setattr(Config, attr, rebuilt.__dict__[attr])


_methods_module._late_section_hooks.append(add_method_section)


def metric_names(ks: Any) -> list[str]:
    """The metrics a run reports for cut-offs ``ks``: HR@K, NDCG@K per K, then MRR (``train.metric`` is one)."""
    ks = list(ks)
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]


# --------------------------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    """How an error message names type ``tp`` (``true/false or one of ['auto']`` for ``bool | Literal["auto"]``)."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if tp is bool:
        return "true/false"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_DECIMAL_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL_NUMBER = re.compile(r"[+-]?([0-9][0-9_]*(\.[0-9_]*)?|\.[0-9][0-9_]*)([eE][+-]?[0-9]+)?")
"""A number as written in a file or on the command line: YAML 1.1 reads ``1e-3`` (no dot) as a string."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to type ``tp``; raise :class:`ConfigError` naming ``key`` otherwise.

    Numbers read alike from a YAML file and from the command line: a float key takes ``1e-3`` (a string to
    YAML 1.1) as the number, an integer key reads ``08`` as decimal (:class:`YAMLLoader` reads ``010`` so
    too), and a string key refuses an unquoted value that YAML reads as a number, boolean or date
    (``2024.10`` would arrive as ``2024.1``) rather than store another spelling of it."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        null = " (or null)" if type(None) in args else ""
        if len(errors) == 1:  # Optional[X]: X's own message (it lists a Literal's choices)
            raise ConfigError(errors[0] + null)
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}{null}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            yaml_bool = (" (YAML reads an unquoted on/off/yes/no as true/false)"
                         if isinstance(value, bool) and all(isinstance(c, str) for c in choices) else "")
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{yaml_bool}")
        return value
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, CommaList):  # "a,b" from the command line: each piece read as one override value
            value = [v.strip() if inner is str else parse_value(v) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple, dict)) and value is not None:
            value = [value]  # one value where a list is wanted ("ks: 10", a quoted path with a comma in it)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _DECIMAL_INT.fullmatch(value.strip()):
            return int(value.strip(), 10)  # "08": decimal, as "010" is
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str) and _DECIMAL_NUMBER.fullmatch(value.strip()):
                number = float(value.strip())  # "1e-3": a string to YAML 1.1, a number to everyone else
            elif isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("nan", "inf", "infinity"):
                number = math.nan
        except OverflowError:  # an integer of 400 digits
            number = math.inf
        except ValueError:  # "1_e3": underscores where float() takes none
            number = None
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # no setting means anything at nan or infinity
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            raise ConfigError(f"{key}: expected a string, got null; leave the key out for its default, or "
                              "quote 'null' to mean that text")
        raise ConfigError(f"{key}: expected a string, got {value!r}, which is how YAML reads the unquoted "
                          "value (a number, boolean or date: 2024.10 becomes 2024.1, on becomes true); quote "
                          "it to keep it as written")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        obj = tp()
        _apply_mapping(obj, value, key)
        return obj
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _hints(cls: type) -> dict[str, Any]:
    """The config keys of a section and their types: its dataclass fields (no class constants such as
    ``RANGES``), typed by their resolved annotations (a method section's type from the field itself)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str = "") -> None:
    note = _discover_sections(obj, mapping) if not prefix else ""
    hints = _hints(type(obj))
    for k, v in mapping.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            raise ConfigError(_unknown_key(key, str(k), hints, top=not prefix, note=note))
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            _apply_mapping(getattr(obj, k), v, key)
        elif dataclasses.is_dataclass(tp) and v is None:  # `train:` with every key commented out: nothing set
            continue
        else:
            setattr(obj, k, _coerce(v, tp, key))


def _unknown_key(key: str, name: str, hints: dict[str, Any], top: bool, note: str = "") -> str:
    """The error for an unknown ``key``: the keys known there, the nearest one, and at the top level (where a
    plugin method's section would be) how to load a plugin, when no known key is near."""
    import difflib

    near = difflib.get_close_matches(name, list(hints), n=1, cutoff=0.75)
    message = f"unknown config key {key!r} (known here: {', '.join(sorted(hints))})"
    if near:
        message += f"; did you mean {near[0]!r}?"
    elif top:
        message += ("; a plugin method's section needs its plugin loaded (--plugin MODULE, "
                    f"${_methods_module.PLUGINS_ENV} or an entry point)")
        if _methods_module._loaded:  # plugins were imported and none registered this section
            message += f"; {_methods_module.plugin_hint()}"
            note = ""  # the hint names the plugins that failed to import too
    return message + (f" [{note}]" if note else "")


def _discover_sections(cfg: Any, keys: Any) -> str:
    """Import the plugins (:func:`crossan.methods.discover_plugins`) when a top-level key among ``keys`` is not
    a field of ``cfg``: it may be the options section of a plugin method not imported yet (a saved run's
    config.yaml read by ``crossan evaluate``, a suite's child process). A plugin that fails to import does not
    hide the unknown key (often a typo): its error comes back as a note for the key's message."""
    global _PLUGIN_FAILURE
    if not isinstance(cfg, CoreConfig) or all(str(k) in type(cfg).__dataclass_fields__ for k in keys):
        return ""
    try:
        discover_plugins()  # once per process: a failure is kept for every later unknown key
    except ConfigError as e:
        _PLUGIN_FAILURE = f"and a plugin failed to load: {e}"
    return _PLUGIN_FAILURE


_PLUGIN_FAILURE = ""
"""Why the process's plugin discovery failed ("" when it did not, or has not run)."""


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML (``1e-3`` → float, ``[a,b]`` → list, ``true`` → bool).
    :func:`load_config` keeps the raw text instead where the key holds a string (``data.path=2024.10``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key, parse_value(raw)
    except RecursionError:
        raise ConfigError(f"{key}: the value is nested too deeply to read ({raw[:40]}…)") from None


def parse_value(raw: str) -> Any:
    """One override value as YAML; ``1e-3`` (a string to YAML, having no dot) is read as a number."""
    try:
        value = yaml.load(raw, Loader=YAMLLoader) if raw.strip() else ""  # YAMLLoader is a SafeLoader
    except (yaml.YAMLError, ValueError):  # ValueError: a value PyYAML's builders cannot read, kept as text
        value = raw
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and value[0] in "+-.0123456789" else value
        except ValueError:
            pass
    return value


def _field_type(cfg: Any, key: str) -> Any:
    """The declared type of dotted ``key`` in ``cfg`` (None when the key is unknown: the caller reports it)."""
    obj: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            return None
        hints = _hints(type(obj))
        if part not in hints:
            return None
        if i == len(parts) - 1:
            return hints[part]
        obj = getattr(obj, part)
    return None


def _is_text(tp: Any) -> bool:
    """A plain string field, possibly optional (not a Literal: its choices are checked as parsed)."""
    if tp is str:
        return True
    if get_origin(tp) in (typing.Union, types.UnionType):
        return all(a is str or a is type(None) for a in get_args(tp)) and str in get_args(tp)
    return False


class CommaList(str):
    """A list written on the command line as ``a,b,c`` (not a flow list ``[a, b]``): split by :func:`_coerce`.
    A string from a YAML file is one value, whatever commas it holds."""


def _override_value(cfg: Any, text: str) -> tuple[str, Any]:
    """``key=value`` for :func:`load_config`: the raw text (trimmed) where ``key`` holds a string, so that a
    path such as ``ds #2`` or ``2024.10`` arrives as typed (a quoted value is unquoted as YAML does), and
    likewise each comma-separated piece where it holds a list of strings; else :func:`parse_override`'s value
    (a comma-separated one split into a list)."""
    key, value = parse_override(text)
    tp = _field_type(cfg, key)
    raw = text.split("=", 1)[1].strip()
    if tp is not None and get_origin(tp) is list and not raw.startswith("["):
        if get_args(tp) in ((str,),):  # list of strings: each piece as typed, as a string key is
            return key, [_unquote(v.strip()) for v in raw.split(",") if v.strip()]
        if isinstance(value, str) and "," in value:
            return key, CommaList(value)
        return key, value
    if tp is not None and _is_text(tp):
        optional = type(None) in get_args(tp)
        # null is null, as in a YAML file (a required string then says so); ~ stays text (a home folder)
        null = raw in ("null", "Null", "NULL") or (optional and raw in ("~", "None"))
        value = None if null else _unquote(raw)
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _unquote(raw: str) -> str:
    """``'a b'`` or ``"a b"`` → ``a b`` (YAML's reading of a quoted scalar); anything else unchanged."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def load_config(files: list[str | Path] = (), overrides: list[str] = (), base: Config | None = None) -> Config:
    """Build a :class:`Config` from defaults, YAML ``files`` and ``key=value`` ``overrides``.

    An error about a key that a file set names that file and the key's line (``a.yaml:3: train.lr: …``),
    those of :func:`validate` (ranges, cross-field checks) included."""
    cfg = base if base is not None else Config()
    sources: dict[str, str] = {}  # dotted key → "FILE:LINE" of the file that set it last
    for f in files:
        p = Path(f)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder; --config takes a YAML file (a run's: {p / 'config.yaml'})")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        data, lines = read_yaml_file(p)
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = _as_saved_run(data)
        where = {key: f"{p}:{lines[key]}" if key in lines else str(p) for key in _flat_keys(data)}
        try:
            _apply_mapping(cfg, data)
        except ConfigError as e:
            raise ConfigError(_located(str(e), where, str(p))) from None
        sources.update(where)
    # before the first override: a plugin section's string keys are then known to _override_value
    _discover_sections(cfg, [o.split("=", 1)[0].split(".", 1)[0].strip() for o in overrides])
    for o in overrides:
        key, value = _override_value(cfg, o)
        _apply_mapping(cfg, _nest(key, value))
        for k in list(sources):  # the command line decides this key (or the whole section) now
            if k == key or k.startswith(f"{key}."):
                del sources[k]
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(_located(str(e), sources)) from None
    return cfg


def _flat_keys(mapping: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key a YAML mapping sets (``{train: {lr: 1}}`` → ``train.lr``), sections included."""
    out = []
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, f"{key}.")
    return out


_MESSAGE_KEY = re.compile(r"(?:unknown config key '([^']+)'|([A-Za-z_][\w.]*)(?:\[\d+\])*:)")


def _located(message: str, where: dict[str, str], default: str | None = None) -> str:
    """``message`` prefixed with where the key it starts with was set (``FILE:LINE``), or ``default`` (a
    file) when that is not known; unchanged when the key was not set by a file."""
    m = _MESSAGE_KEY.match(message)
    key = (m.group(1) or m.group(2)) if m else None
    place = (where.get(key) if key else None) or default
    return f"{place}: {message}" if place else message


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    from crossan.data.catalogue import MODALITIES

    get_method(cfg.method)  # ConfigError naming the known methods
    if not cfg.modalities:
        raise ConfigError("modalities: at least one modality is needed")
    for m in cfg.modalities:
        if m not in MODALITIES:
            raise ConfigError(f"modalities: {m!r} is not one of {list(MODALITIES)}")
    if len(set(cfg.modalities)) != len(cfg.modalities):
        raise ConfigError(f"modalities: {cfg.modalities} repeats a modality")
    for key, val in (("data.min_interactions", cfg.data.min_interactions), ("data.max_seq_len", cfg.data.max_seq_len),
                     ("data.max_text_chars", cfg.data.max_text_chars),
                     ("train.batch_size", cfg.train.batch_size), ("user.dim", cfg.user.dim),
                     ("eval.batch_size", cfg.eval.batch_size)):
        if val < 1:
            raise ConfigError(f"{key}: must be at least 1, got {val}")
    if cfg.data.min_interactions < 3:
        raise ConfigError("data.min_interactions: leave-one-out needs at least 3 interactions per user")
    if cfg.data.max_seq_len > MAX_SEQ_LEN:
        raise ConfigError(f"data.max_seq_len: at most {MAX_SEQ_LEN:,} (self-attention over the window costs L² "
                          f"per user, and every split is a users × (L + 3) matrix), got {cfg.data.max_seq_len:,}")
    if cfg.user.n_heads < 1:
        raise ConfigError(f"user.n_heads: must be at least 1, got {cfg.user.n_heads}")
    if cfg.user.dim % cfg.user.n_heads:
        raise ConfigError(f"user.n_heads: {cfg.user.n_heads} does not divide user.dim {cfg.user.dim}")
    if cfg.train.epochs < 0:
        raise ConfigError(f"train.epochs: must be at least 0, got {cfg.train.epochs}")
    if cfg.train.patience < 1:
        raise ConfigError(f"train.patience: must be at least 1, got {cfg.train.patience}")
    for key in ("lr", "lr_adapter", "lr_peft", "lr_backbone"):
        val = getattr(cfg.train, key)
        if not math.isfinite(val) or val <= 0:
            raise ConfigError(f"train.{key}: must be a finite number > 0, got {val!r}")
    for key in ("weight_decay", "grad_clip", "pop_smoothing"):
        val = getattr(cfg.train, key)
        if not math.isfinite(val) or val < 0:
            raise ConfigError(f"train.{key}: must be a finite number >= 0, got {val!r}")
    for key, val in (("user.n_layers", cfg.user.n_layers), ("user.ffn_mult", cfg.user.ffn_mult)):
        if val < 1:
            raise ConfigError(f"{key}: must be at least 1, got {val}")
    if not (0.0 <= cfg.user.dropout < 1.0):
        raise ConfigError(f"user.dropout: must be in [0, 1), got {cfg.user.dropout!r}")
    if cfg.train.eval_every < 1:
        raise ConfigError(f"train.eval_every: must be at least 1, got {cfg.train.eval_every}")
    if cfg.train.max_steps_per_epoch < 0:
        raise ConfigError(f"train.max_steps_per_epoch: must be >= 0 (0 = full epoch), got {cfg.train.max_steps_per_epoch}")
    if not cfg.eval.ks or any(k < 1 for k in cfg.eval.ks) or len(set(cfg.eval.ks)) != len(cfg.eval.ks):
        raise ConfigError(f"eval.ks: must be distinct positive integers, got {cfg.eval.ks}")
    check_seed(cfg.seed)
    check_device(cfg.device)
    if cfg.train.metric not in metric_names(cfg.eval.ks):
        raise ConfigError(f"train.metric: {cfg.train.metric!r} is not one of {metric_names(cfg.eval.ks)}")
    _validate_ranges(cfg)


SEED_LIMIT = 2**32
"""Seeds are integers in [0, 2**32): what NumPy's generator takes, and the epoch streams derived from a seed
(``seed * 1000003 + epoch``) stay within int64."""


def check_seed(seed: int, key: str = "seed") -> None:
    """:class:`ConfigError` naming ``key`` unless ``0 <= seed < 2**32``."""
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{key}: must be an integer in [0, 2**32) = [0, {SEED_LIMIT - 1}], got {seed}")


def check_device(device: str, key: str = "device") -> None:
    """:class:`ConfigError` naming ``key`` unless ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps`` (the ``device`` config key; ``--device`` of the commands that load a run)."""
    if device != "auto" and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", device):
        raise ConfigError(f"{key}: {device!r} is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


# (key, lowest allowed, whether the lowest value itself is allowed, highest allowed exclusive or None); the
# methods' sections state their own (``RANGES`` and ``check`` of each options dataclass, towers/options.py)
_RANGES: tuple[tuple[str, float, bool, float | None], ...] = (
    *[(f"encoders.{m}.{k}", lo, inclusive, None) for m in ("text", "image", "video", "audio")
      for k, lo, inclusive in (("num_taps", 1, True), ("max_text_len", 1, True), ("image_size", 0, True),
                               ("num_frames", 0, True), ("audio_seconds", 0, False), ("sample_rate", 0, True))],
    ("encoders.batch_size", 1, True, None), ("cache.memory_limit_gb", 0, True, None),
    ("cache.standardize_min_rel_std", 0, True, 1),
)


def _validate_ranges(cfg: Config) -> None:
    """Range checks of the numeric options that types cannot express, each error naming its key: the
    run-level ones above, then each method section's ``RANGES`` and ``check``."""
    ranges = list(_RANGES)
    sections = [(m.name, getattr(cfg, m.name)) for m in option_sections()]
    for name, section in sections:  # a plugin's options need not derive from Options
        ranges += [(f"{name}.{k}", lo, inclusive, hi) for k, lo, inclusive, hi in getattr(section, "RANGES", ())]
    for key, lo, inclusive, hi in ranges:
        val: Any = cfg
        for part in key.split("."):
            val = getattr(val, part)
        if val is None:  # an encoder key left to the preset
            continue
        low_ok = val >= lo if inclusive else val > lo
        if not math.isfinite(val) or not low_ok or (hi is not None and val >= hi):
            raise ConfigError(f"{key}: must be {range_text(lo, inclusive, hi)}, got {val!r}")
    for name, section in sections:
        if callable(getattr(section, "check", None)):
            section.check(name)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config (or one of its sections) as plain data. A whole :class:`Config` keeps the run-level keys, the
    built-in methods' sections and its own method's: a plugin loaded in the process but not used by the run
    leaves no section behind, so the run's config.yaml reads without that plugin."""
    out = dataclasses.asdict(cfg)
    return _run_sections(out, cfg.method) if isinstance(cfg, CoreConfig) else out


def _run_sections(data: dict[str, Any], method: Any) -> dict[str, Any]:
    """``data`` (a config's mapping) without the sections of plugin methods other than ``method``."""
    plugins = {m.name for m in _methods_module.METHODS.values() if m not in _methods_module.BUILTIN}
    return {k: v for k, v in data.items() if k not in plugins or k == method}


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a crash never leaves half a config.yaml)."""
    from crossan.utils import atomic_write  # here, not at the top: keeps crossan.utils out of config imports

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def config_from_dict(data: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a saved ``config.yaml``'s mapping (older layouts read as they meant)."""
    cfg = Config()
    _apply_mapping(cfg, legacy_encoder_keys(data))
    validate(cfg)
    return cfg



_SAVED_SECTIONS = ("method", "modalities", "data", "user", "train", "eval", "encoders", "cache")
"""Top-level keys that every run's config.yaml has held (:func:`to_dict` writes every section out)."""


def _as_saved_run(data: dict[str, Any]) -> dict[str, Any]:
    """A ``--config`` file read as :func:`config_from_dict` reads a run's config.yaml when it is one (every section
    and every modality's encoder section written out): an old one's default-equal encoder values then mean the
    preset's (:func:`legacy_encoder_keys`), as when the run trained, not values given. A hand-written file, which
    names only the keys it sets, is taken as written."""
    encoders = data.get("encoders")
    whole = (all(k in data for k in _SAVED_SECTIONS) and isinstance(encoders, dict)
             and all(isinstance(encoders.get(m), dict) for m in ("text", "image", "video", "audio")))
    return legacy_encoder_keys(data) if whole else data


def _written_after_legacy_layout(saved: dict[str, Any]) -> bool:
    """Whether a saved config was written by a crossan later than the old encoder layout: it holds ``fft.lr_text``
    (added 2026-12-03, two days after encoder keys became null for "the preset's"), which every config.yaml
    since has written (null when unset). Such a file whose encoder keys are all set is taken as written."""
    fft = saved.get("fft")
    return isinstance(fft, dict) and "lr_text" in fft


def legacy_encoder_keys(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as the current :class:`EncoderOverrides` read it.

    Until 2026-12-01 a config.yaml wrote every encoder key of every modality, and a value equal to
    :class:`EncoderSpec`'s default meant "the preset's"; now such keys are written as null. A saved config
    whose encoder sections hold no null at all is of the old kind: its default-equal values become null, so
    that it resolves to the encoders it was run with."""
    encoders = saved.get("encoders") if isinstance(saved, dict) else None
    if not isinstance(encoders, dict):
        return saved
    sections = {m: encoders[m] for m in ("text", "image", "video", "audio") if isinstance(encoders.get(m), dict)}
    keys = [f.name for f in dataclasses.fields(EncoderSpec) if f.name != "model"]
    if (not sections or any(sec.get(k, 0) is None for sec in sections.values() for k in keys)
            or _written_after_legacy_layout(saved)):
        return saved
    default = dataclasses.asdict(EncoderSpec())
    new_enc = {**encoders, **{m: {k: (None if k in keys and v == default[k] else v) for k, v in sec.items()}
                              for m, sec in sections.items()}}
    return {**saved, "encoders": new_enc}


PRECISION_OF_DTYPE = {"bfloat16": "bf16", "float32": "fp32"}
"""A compute dtype's name (as manifests and checkpoints record it) → the ``precision`` value that forces it on
any device."""


CHANGED_DEFAULTS: dict[str, Any] = {
    "train.negatives": "unique",  # added 2026-11-30 (2b87629) as "unique"; default "slots" since 7aab18c
    "precision": "fp32",  # added 2026-11-30 (6cf8d3d) as "auto"; everything before ran in float32
    "train.compile": False,  # added 2026-12-01 as false (eager, as before it); default "auto" since 0.1.20
}
"""Keys whose default changed after they were added → the value a saved config.yaml that lacks the key ran
with (the behaviour before the key existed, which the key's first default kept). :func:`config_differences`
fills a missing key from here, not from today's default, so that an old run is not taken for a run of the
new default. A missing key whose default never changed since it was added takes today's default.

Found by resolving ``to_dict(Config())`` at every commit of the history and listing each key whose default
later changed: ``train.negatives`` (``unique`` → ``slots``) was the only one until ``train.compile``
(``false`` → ``auto``, crossan 0.1.20). ``precision`` needs an entry for
the opposite reason: its first default, ``auto``, did not keep the behaviour before it (float32 everywhere;
``auto`` is bf16 on CPUs and GPUs with bf16 units), so a run saved before it ran as ``fp32``.
``cache.train_table`` was added as ``true`` and became ``false``, but a config without it was written
before the training table existed (the same as ``false``, today's default; the inputs are bit-identical
either way). The per-modality encoder keys (``encoders.<m>.*``) changed from concrete defaults to null
("the preset's"), but they were never absent from a saved config: :func:`legacy_encoder_keys` reads them.
Add a row here whenever a key's default changes."""


def _with_defaults(saved: Any, defaults: Any, prefix: str = "") -> Any:
    """``saved`` with every key it lacks filled in (recursively): from :data:`CHANGED_DEFAULTS` for a key
    whose default changed after it was added, else from ``defaults`` (today's). ``prefix``: the dotted path
    of ``saved`` in the configuration (``"train."``)."""
    if not (isinstance(saved, dict) and isinstance(defaults, dict)):
        return saved
    out = dict(saved)
    for k, v in defaults.items():
        key = f"{prefix}{k}"
        if k in saved:
            out[k] = _with_defaults(saved[k], v, f"{key}.")
        elif isinstance(v, dict):
            out[k] = _with_defaults({}, v, f"{key}.")
        else:
            out[k] = CHANGED_DEFAULTS.get(key, v)
    return out


PATH_KEYS = (("data", "path"), ("cache", "dir"))
"""Config keys holding file system paths, stored resolved (absolute, symlinks resolved) in config.yaml."""


def resolve_path(value: str) -> str:
    """A path absolute, ``~`` expanded and symlinks resolved (the spelling config.yaml stores)."""
    return str(Path(value).expanduser().resolve())


def _existing_path(value: str) -> str:
    """``value`` resolved (:func:`resolve_path`) when it names a file or folder that exists, else as given."""
    try:
        return resolve_path(value.strip()) if value.strip() and Path(value.strip()).expanduser().exists() else value
    except (OSError, RuntimeError):  # "~nouser/x", a name too long: not a path here
        return value


PACKAGED_PREFIXES = ("efficientnet-lite0", "whisper-ct2")
"""``encoders.<m>.model`` names whose ``:PATH`` suffix is a weights file or folder (``efficientnet-lite0:FILE``)."""


def resolve_model_spec(value: str) -> str:
    """``encoders.<m>.model`` with its local paths resolved (:func:`resolve_path`), as config.yaml stores them:
    a checkpoint folder, the ``:PATH`` of a packaged backbone (:data:`PACKAGED_PREFIXES`) and a ``config:``
    string's ``tokenizer=`` folder. Only paths that exist from the working folder are resolved; anything else is
    a hub id or a name, left as given. A run saved with a relative folder failed from any other working folder
    (serving, ``crossan evaluate``), and one folder spelt two ways named two caches."""
    text = value.strip()
    if not text or text in PACKAGED_PREFIXES:  # the packaged weights by name, whatever the working folder holds
        return value
    if text.startswith("config:"):
        family, colon, body = text[len("config:"):].partition(":")
        parts = [f"tokenizer={_existing_path(p.split('=', 1)[1])}" if p.strip().startswith("tokenizer=") else p
                 for p in body.split(",")]
        resolved = f"config:{family}{colon}{','.join(parts)}"
    else:
        kind, colon, where = text.partition(":")
        resolved = f"{kind}:{_existing_path(where)}" if colon and kind in PACKAGED_PREFIXES else _existing_path(text)
    return resolved if resolved != text else value  # as given when nothing resolved (the cache folder's name)


def _resolved_paths(d: dict[str, Any]) -> dict[str, Any]:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for section, key in PATH_KEYS:
        if isinstance(d.get(section), dict) and d[section].get(key):
            d[section][key] = resolve_path(str(d[section][key]))
    encoders = d.get("encoders")
    if isinstance(encoders, dict):
        for m, spec in encoders.items():
            if isinstance(spec, dict) and isinstance(spec.get("model"), str):
                encoders[m] = {**spec, "model": resolve_model_spec(spec["model"])}
    return d


def config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """``key: old → new`` for every key whose value in a saved config.yaml differs from ``cfg``.

    Paths compare resolved (the same dataset spelled relative, absolute or through a symlink is the same), and
    a key the saved file lacks (added to crossan after it was written) takes the value that run ran with: its
    default when it was added, which kept the old behaviour (:data:`CHANGED_DEFAULTS` for the keys whose
    default changed later, today's default for the others). A run written before a new option appeared is
    still the same run; one written before ``train.negatives`` existed differs from a run of today's
    default (``train.negatives: 'unique' → 'slots'``).
    """
    now = to_dict(cfg)
    defaults = to_dict(Config())
    if cfg.method in now and cfg.method not in defaults:  # a plugin method's section: its defaults
        defaults[cfg.method] = dataclasses.asdict(getattr(Config(), cfg.method))
    old = _resolved_paths(_with_defaults(legacy_encoder_keys(saved), defaults))

    def diff(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            # key=str: a hand-edited file may hold a non-string key (1: x), which a plain sort cannot order
            keys = sorted(set(a) | set(b), key=str)
            return [d for k in keys for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [f"{prefix[:-1]}: {a!r} → {b!r}"]

    return diff(old, _resolved_paths(now), "")


for _row in option_sections():  # a plugin registered before this module was imported: its options checked
    if _row not in _methods_module.BUILTIN:
        check_options_class(_row)
