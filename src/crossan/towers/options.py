"""Each item-tower method's own options (a config section named after the method: ``crossan.fusion=concat``).

A section states its numeric ranges in ``RANGES`` — ``(field, lowest, lowest allowed, highest exclusive or
None)`` — and rules between its fields in ``check(key)``; :func:`crossan.config.validate` applies both to
every method's section, naming the key at fault. Kept free of torch imports so that reading a config never
loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from crossan.errors import ConfigError

Range = tuple[str, float, bool, "float | None"]
"""(field, lowest value, whether the lowest is allowed, highest value exclusive or None)."""


def range_text(lo: float, inclusive: bool, hi: float | None) -> str:
    """A :data:`Range`'s allowed values in words, as the range check's error and ``crossan methods`` say them:
    ``at least 1``, ``greater than 0``, ``in [0, 1)``, ``in (0, 1)``."""
    if hi is None:
        return f"{'at least' if inclusive else 'greater than'} {lo}"
    return f"in {'[' if inclusive else '('}{lo}, {hi})"


@dataclass
class Options:
    """Base of the method sections: no ranges, no rules."""

    RANGES: ClassVar[tuple[Range, ...]] = ()

    def check(self, key: str) -> None:
        """Rules between fields; :class:`ConfigError` naming ``key.field`` (``key``: the section's name)."""


@dataclass
class IDConfig(Options):
    """SASRec with learned item-ID embeddings (no content)."""


@dataclass
class FrozenConfig(Options):
    """Frozen features (METHOD.md §9): per modality GELU(Linear(last-layer state → d)), then Linear(concat → d)."""


@dataclass
class SANBConfig(Options):
    """Side adapter block shared by IISAN and CROSSAN (METHOD.md §4)."""

    RANGES: ClassVar[tuple[Range, ...]] = (
        ("side_dim", 1, True, None), ("bottleneck", 1, True, None), ("dropout", 0, True, 1),
        ("init_std", 0, False, None), ("gate_temperature", 0, False, None))

    side_dim: int = 768
    """d_s, the width the side network works at (each modality's states are projected to it if needed)."""
    bottleneck: int = 64
    """r, the SANB bottleneck width."""
    dropout: float = 0.1
    """Branch dropout of each SANB: element-wise on the bottleneck branch's output before the residual add
    (docs/method.md §4; IISAN's official adapter defines 0.1 but never applies it, so
    ``configs/iisan_official.yaml`` sets 0)."""
    init_std: float = 0.01
    """SANB weights are drawn from N(0, init_std²), biases start at 0: each block starts near the identity.
    Must be > 0: with both projections at zero, ReLU(0) = 0 leaves every weight without a gradient."""
    gate_temperature: float = 0.1
    """τ of the learned gates, ``sigmoid(logit / τ)`` (the gated fusion of side and tapped states in IISAN's
    and CROSSAN's chains, and CROSSAN's exchange gates): a smaller τ makes a logit's change move the gate
    faster."""


@dataclass
class IISANConfig(SANBConfig):
    """IISAN (METHOD.md §5) generalised to M modalities."""

    RANGES: ClassVar[tuple[Range, ...]] = SANBConfig.RANGES + (
        ("official_lr_text_head", 0, False, None), ("official_lr_image_head", 0, False, None))

    inter: Literal["pairs", "single"] = "pairs"
    """``pairs``: one inter chain per pair of modalities (C(M,2)); ``single``: one chain over all (softmax gate)."""
    lr_groups: Literal["crossan", "official"] = "crossan"
    """Optimiser groups. ``crossan``: side network (projections, SANBs, gates) at ``train.lr_adapter``, heads
    and fusion at ``train.lr``. ``official`` (what the name-substring grouping of IISAN's official code gives,
    declared here by module): the first head layer of the text chain at ``official_lr_text_head`` (5e-5) and of
    every other intra chain at ``official_lr_image_head`` (1e-4); the text chain's gate and the inter chains'
    gates at ``train.lr`` (2e-4); the other intra gates at ``official_lr_image_head``; SANBs and
    projections at ``train.lr_adapter``; inter heads, second head layers and fusion at ``train.lr``."""
    official_lr_text_head: float = 5e-5
    """``lr_groups: official``: learning rate of the text chain's first head layer (IISAN's ``fine_tune_lr_text``)."""
    official_lr_image_head: float = 1e-4
    """``lr_groups: official``: learning rate of the other intra chains' first head layers and gates
    (IISAN's ``fine_tune_lr_image``)."""
    missing: Literal["crossan", "zeros"] = "crossan"
    """Items lacking a modality. ``crossan``: that intra chain's output is zeroed and an inter pair reads its
    present side twice. ``zeros`` (official code): the zero states go through every chain like real ones."""
    image_head_init: Literal["default", "xavier"] = "default"
    """Init of the image chain's last head layer (d_s → d): ``default`` as ``nn.Linear``; ``xavier``
    Xavier-normal weights, zero bias (the official code's image classifier head)."""

    def check(self, key: str) -> None:
        default = type(self)()  # a plugin's subclass may have other defaults
        if self.lr_groups != "official":  # the crossan groups have no such rates: they would change nothing
            for name in ("official_lr_text_head", "official_lr_image_head"):
                if getattr(self, name) != getattr(default, name):
                    raise ConfigError(f"{key}.{name}: acts with {key}.lr_groups=official only, and {key}.lr_groups "
                                      f"is {self.lr_groups!r}; set {key}.lr_groups=official or leave {name} at "
                                      f"{getattr(default, name)}")


@dataclass
class CrossanConfig(SANBConfig):
    """CROSSAN (METHOD.md §6) with MOMEF fusion (§7)."""

    exchange: Literal["softmax", "none", "inputs"] = "softmax"
    """Cross-modal exchange between the chains at every depth. ``softmax``: each chain adds a gated softmax
    mix of the other chains' previous side states (METHOD.md §6); ``none``: fully separate chains;
    ``inputs``: each chain's input is a softmax mix (per depth, over the present modalities) of *all*
    modalities' tapped states plus ``(1 − g)·s`` of its own previous state — the reading of the paper's
    recovered equation (METHOD.md §1, §6); logits start at 0 for the own modality and
    ``inputs_other_logit`` for the others."""
    inputs_other_logit: float = -2.0
    """``exchange: inputs``: initial softmax logit of the other modalities (own modality 0); with M = 2 the
    own modality starts at weight 1 / (1 + e^-2) ≈ 0.88."""
    share_adapters: bool = False
    """One SANB per depth shared by all modalities (parameters then do not grow with M)."""
    fusion: Literal["momef", "concat", "mean"] = "momef"
    """How the per-modality embeddings become one item embedding. ``momef``: Mixture of Modality Expert
    Fusion (a router weighs one expert per modality, METHOD.md §7); ``concat``: a linear map of their
    concatenation; ``mean``: their average over the modalities the item has (ablations)."""
    momef_temperature: float = 1.0
    """Softmax temperature of MOMEF's router logits (lower: sharper routing)."""
    momef_top_k: int = 0
    """Route each item to its top-k modality experts (0: all)."""
    momef_expert_mult: int = 1
    """Hidden width of each MOMEF expert MLP, as a multiple of d."""
    load_balance_weight: float = 0.0
    """Weight of the MOMEF load-balancing loss (0: off)."""

    RANGES: ClassVar[tuple[Range, ...]] = SANBConfig.RANGES + (
        ("momef_temperature", 0, False, None), ("momef_top_k", 0, True, None), ("momef_expert_mult", 1, True, None),
        ("load_balance_weight", 0, True, None), ("inputs_other_logit", -100, True, 100))

    MOMEF_KEYS: ClassVar[tuple[str, ...]] = (
        "momef_temperature", "momef_top_k", "momef_expert_mult", "load_balance_weight")
    """The options that act on MOMEF only (``fusion: momef``)."""

    def check(self, key: str) -> None:
        default = type(self)()  # a plugin's subclass may have other defaults
        if self.fusion != "momef":  # concat and mean have no router: the options would change nothing
            for name in self.MOMEF_KEYS:
                if getattr(self, name) != getattr(default, name):
                    raise ConfigError(f"{key}.{name}: acts on MOMEF's router only, and {key}.fusion is "
                                      f"{self.fusion!r}; set {key}.fusion=momef or leave {name} at "
                                      f"{getattr(default, name)}")
        if self.exchange != "inputs" and self.inputs_other_logit != default.inputs_other_logit:
            raise ConfigError(f"{key}.inputs_other_logit: acts with {key}.exchange=inputs only, and {key}.exchange "
                              f"is {self.exchange!r}; set {key}.exchange=inputs or leave it at "
                              f"{default.inputs_other_logit}")
        if self.momef_top_k == 1 and self.load_balance_weight == 0:
            raise ConfigError(f"{key}.momef_top_k: 1 keeps one expert per item at weight 1, so the task loss gives "
                              f"the router no gradient; set {key}.load_balance_weight > 0 with it (or use 0 or ≥ 2)")


@dataclass
class EndToEndConfig(Options):
    """Options shared by the end-to-end baselines (FFT, Adapter, LoRA), whose backbones run forward and
    backward at every training step (METHOD.md §9)."""

    RANGES: ClassVar[tuple[Range, ...]] = (("input_memory_gb", 0, True, None),)

    gradient_checkpointing: bool = False
    """Recompute each backbone layer's activations in the backward pass (``gradient_checkpointing_enable``
    of the transformers model, non-reentrant) instead of keeping them: less memory, about 1/3 more time."""
    input_memory_gb: float = 8.0
    """Preprocessed model inputs (tokens, pixel values, filterbanks) are kept in memory per item so that media
    are decoded once, not at every step; this many GiB for all modalities together (filled in the order of
    ``modalities``; pixel values take one byte each, read back exactly: ``towers.endtoend.Palette``). Items beyond it are preprocessed again at every use, inside the timed training steps:
    results.json's ``tower.inputs`` counts those decodings, and the suite report flags the run."""
    preprocess_upfront: bool = True
    """Preprocess every item (up to ``input_memory_gb``) when the tower is built, so that timed training
    epochs exclude media decoding, as the side networks' epoch times exclude building their cache."""


@dataclass
class FFTConfig(EndToEndConfig):
    """Full fine-tuning: every backbone parameter that reaches the item embedding trains (at
    ``train.lr_backbone``, the text backbone at ``fft.lr_text`` when set); the heads train at ``train.lr``."""

    RANGES: ClassVar[tuple[Range, ...]] = EndToEndConfig.RANGES + (("lr_text", 0, False, None),)

    lr_text: float | None = None
    """Learning rate of the text backbone; null: ``train.lr_backbone`` like the others. METHOD.md §9 lists
    1e-4 / 5e-5 for FFT backbones, and IISAN's official FFT trains its text backbone at 5e-5
    (``fft.lr_text=5e-5``); the default keeps one rate for every modality, as the published FFT runs used."""


@dataclass
class AdapterConfig(EndToEndConfig):
    """Houlsby bottleneck adapters after the attention output and the FFN output of every layer."""

    RANGES: ClassVar[tuple[Range, ...]] = EndToEndConfig.RANGES + (
        ("bottleneck", 1, True, None), ("init_std", 0, False, None))

    bottleneck: int = 64
    """r: each adapter maps D → r → D."""
    activation: Literal["gelu", "relu"] = "gelu"
    """Non-linearity between each adapter's down- and up-projection."""
    init_std: float = 0.01
    """Adapter weights are drawn from N(0, init_std²); biases start at 0. Must be > 0: with both projections
    at zero neither gets a gradient, ever (only the up-projection's bias would train); ``zero_init_up``
    starts the adapted model at the original exactly and still trains."""
    zero_init_up: bool = False
    """Start the up-projection at exactly zero (the adapted model then equals the original); otherwise it is
    drawn like the down-projection, so each adapter starts near the identity."""


@dataclass
class LoRAConfig(EndToEndConfig):
    """LoRA through ``peft`` on every layer's attention query and value."""

    RANGES: ClassVar[tuple[Range, ...]] = EndToEndConfig.RANGES + (
        ("rank", 1, True, None), ("alpha", 0, False, None), ("dropout", 0, True, 1))

    rank: int = 8
    """r: rank of each LoRA update ``B·A`` (A: r × D_in, B: D_out × r; B starts at 0, so training starts from
    the pretrained weights, which stay frozen and untouched)."""
    alpha: int = 16
    """LoRA scaling: the update is multiplied by ``alpha / rank``."""
    dropout: float = 0.1
    """Dropout on the LoRA branch's input (peft's ``lora_dropout``)."""
    targets: list[str] = field(default_factory=list)
    """Module names to wrap, matched as peft does (a module whose full name equals or ends with
    ``.NAME``); each encoder takes the names that match in it. Empty: the query and value projection of
    every layer of each encoder (``query``/``value`` for BERT and VideoMAE, ``q_proj``/``v_proj`` for ViT,
    AST and Whisper in transformers 5)."""
