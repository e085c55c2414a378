"""CNN encoders (EfficientNet-Lite0): cover images, and video clips frame by frame (METHOD.md §3).

Taps
    A CNN has no tokens. Its "hidden states" are its feature maps — the stem, each block's output and the
    head (18 for EfficientNet-Lite0, so ``num_layers`` = 17) — each global-average-pooled over space. The
    K taps are chosen among them by :func:`~crossan.encoders.base.tap_indices` as for every encoder
    (K = 7: maps 0, 3, 6, 9, 11, 14, 17 — the stem, blocks 2, 5, 8, 10 and 13, the head).

Widths
    The maps' widths differ (32 … 320 channels, 1280 in the head) while the cache, the live features and the
    side networks take one width D per modality (``[N+1, K, D]``). The wrapper pads every pooled map with
    zeros to the widest one (D = 1280): an exact embedding (no information lost or mixed, tap k fills the
    first ``w_k`` dimensions), so the side network's one input projection per modality (METHOD §4) reads
    every tap unchanged, and standardisation leaves the padding at exactly zero (a dimension with no
    variance over the items gets a zero scale). Nothing downstream needs to know; ``tap_widths`` in the
    cache manifest and ``crossan encoders`` say which dimensions are real.

Video
    No pretrained video model ships offline, so video uses the image network per frame: ``num_frames``
    frames are sampled, encoded as one batch, and each tap is averaged over the frames (mean pooling over
    time; the frame order is not modelled).

Pixels are resized to a square ``image_size`` (Pillow bilinear, as the ViT path) and normalised the
TensorFlow way, ``(pixel − 127) / 128``. The network runs in channels-last memory format (faster on CPUs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import load_image, load_video
from crossan.encoders.backbones import BackboneInfo
from crossan.encoders.base import ModalityEncoder
from crossan.encoders.efficientnet import PIXEL_MEAN, PIXEL_STD
from crossan.encoders.vision import normalize_uint8, resize_uint8

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord


def _bilinear() -> Any:
    from PIL.Image import Resampling

    return Resampling.BILINEAR


class CNNEncoder(ModalityEncoder):
    """Common part: pooled feature maps as one-token hidden states, zero-padded to ``hidden_size``."""

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        self.image_size = int(info.hf_config.image_size)
        self.tap_widths: list[int] = list(info.tap_widths or [])
        self.model.to(memory_format=torch.channels_last)

    def resized(self, images: list[Any]) -> np.ndarray:
        """PIL images → ``[B, S, S, 3]`` uint8 (Pillow and numpy only: the reading thread's half)."""
        return resize_uint8(images, self.image_size, self.image_size, _bilinear())

    def normalized(self, arr: np.ndarray) -> torch.Tensor:
        """uint8 ``[B, S, S, 3]`` → normalised ``[B, 3, S, S]`` float32."""
        return normalize_uint8(arr, 1.0, (PIXEL_MEAN,) * 3, (PIXEL_STD,) * 3)

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        return self._finish_pixels([self._stage_pixels(m) for m in media])

    def stage(self, item: Any) -> Any:
        return super().stage(item) if self._overrides_process(CNNEncoder) else self._stage_pixels(item)

    def finish(self, staged: list[Any]) -> dict[str, torch.Tensor]:
        return super().finish(staged) if self._overrides_process(CNNEncoder) else self._finish_pixels(staged)

    def _stage_pixels(self, item: Any) -> np.ndarray:
        """One item's uint8 resize (:meth:`resized`)."""
        raise NotImplementedError

    def _finish_pixels(self, staged: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch's model inputs from :meth:`_stage_pixels` results."""
        raise NotImplementedError

    def pooled_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images ``[B, 3, H, W]`` → each feature map pooled over space, ``[B, w_i]``."""
        x = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model.pooled_features(x)

    def hidden_states(self, inputs: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        pooled = self.pooled_states(inputs["pixel_values"])
        if len(pooled) != self.num_layers + 1:
            raise RuntimeError(f"{self.name}: expected {self.num_layers + 1} feature maps, got {len(pooled)}")
        padded = tuple(F.pad(p, (0, self.hidden_size - p.shape[1])).unsqueeze(1) for p in pooled)
        return padded, None

    def pooled_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def processor_settings(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "resize": "Pillow bilinear to a square",
                "normalise": "(pixel - 127) / 128", "tap_widths": self.tap_widths}


class CNNImageEncoder(CNNEncoder):
    """Cover images through the CNN: taps = pooled feature maps."""

    modality = "image"
    per_item_inputs = True

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        return load_image(catalogue.path(record, "image"), record.item_id)

    def placeholder(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (self.image_size, self.image_size))

    @property
    def finish_in_model_thread(self) -> bool:
        return not self._overrides_process(CNNEncoder)

    def _stage_pixels(self, item: Any) -> np.ndarray:
        return self.resized([item])

    def _finish_pixels(self, staged: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.normalized(np.concatenate(staged))}

    def pooled_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.pooled_maps(pixel_values)


class CNNVideoEncoder(CNNEncoder):
    """Video clips as ``num_frames`` sampled frames through the CNN, each tap averaged over the frames."""

    modality = "video"
    per_item_inputs = True

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        self.num_frames = int(spec.num_frames or info.hf_config.num_frames)

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        return load_video(catalogue.path(record, "video"), self.num_frames, self.spec.frame_sampling, record.item_id)

    def placeholder(self) -> Any:
        return [np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)] * self.num_frames

    def _stage_pixels(self, item: Any) -> np.ndarray:
        from PIL import Image

        return self.resized([Image.fromarray(np.ascontiguousarray(f)) for f in item])

    def _finish_pixels(self, staged: list[np.ndarray]) -> dict[str, torch.Tensor]:
        pixels = self.normalized(np.concatenate(staged))
        return {"pixel_values": pixels.view(len(staged), self.num_frames, *pixels.shape[1:])}

    def pooled_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        b, f = pixel_values.shape[:2]
        pooled = self.pooled_maps(pixel_values.flatten(0, 1))
        return [p.view(b, f, -1).mean(dim=1) for p in pooled]

    def processor_settings(self) -> dict[str, Any]:
        return super().processor_settings() | {"num_frames": self.num_frames, "time_pooling": "mean over frames"}
