"""Image (ViT-like, CLS pooling) and video (VideoMAE-like, mean pooling) encoders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import load_image, load_video
from crossan.encoders.backbones import BackboneInfo, EncoderSpecError, hub_kwargs
from crossan.encoders.base import ModalityEncoder

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord


def _processor_class(name: str) -> type:
    """The PIL/numpy processor class (transformers falls back to it anyway when torchvision is absent)."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _load_image_processor(info: BackboneInfo) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(info.name, **hub_kwargs(info.name))
    except OSError as e:  # transformers' message points at the hub; a folder without its processor is the usual case
        raise EncoderSpecError(
            f"encoders.{info.modality}.model={info.name!r}: its image processor cannot be loaded (no "
            "preprocessor_config.json there?), and a pretrained model must be fed as its processor prepares "
            "images; save it beside the weights (image_processor.save_pretrained(folder))") from e


def _square(size: int) -> dict[str, int]:
    return {"height": size, "width": size}


def _height_width(size: Any) -> tuple[Any, Any]:
    """(height, width) of a processor's ``size``/``crop_size`` (a dict or an object; None where unset)."""
    if isinstance(size, dict):
        return size.get("height"), size.get("width")
    return getattr(size, "height", None), getattr(size, "width", None)


def _output_size(processor: Any) -> tuple[int, int] | None:
    """(height, width) of the pixels an image processor makes: its crop when it crops, else its resize
    target (None when it does not say: e.g. a shortest-edge resize without a crop)."""
    cropped = getattr(processor, "do_center_crop", False)
    height, width = _height_width(getattr(processor, "crop_size" if cropped else "size", None))
    return (int(height), int(width)) if height and width else None


def _check_output_size(processor: Any, info: BackboneInfo, model_size: int, what: str, fix: str) -> None:
    """:class:`EncoderSpecError` naming the checkpoint when its processor makes ``what`` of another size than
    the model's ``image_size`` (transformers fails at the first batch instead, naming neither)."""
    made = _output_size(processor)
    if made is not None and made != (model_size, model_size):
        raise EncoderSpecError(
            f"encoders.{info.modality}.model={info.name!r}: its image processor makes {made[0]}×{made[1]} {what} "
            f"but the model takes {model_size} px (image_size in its config.json); {fix}")


def _resize_to(processor: Any, size: int) -> None:
    """Make ``processor`` produce ``size`` px squares (``encoders.image.image_size``). A processor that resizes
    and then centre-crops (DeiT: 256 → 224) keeps its ratio of resize to crop, so the crop keeps the same share
    of the image and the model's own size changes nothing; one that only resizes resizes to the square."""
    crop_h, crop_w = _height_width(getattr(processor, "crop_size", None))
    height, width = _height_width(getattr(processor, "size", None))
    if getattr(processor, "do_center_crop", False) and crop_h and crop_w:
        if height and width:
            processor.size = {"height": round(height * size / crop_h), "width": round(width * size / crop_w)}
        else:
            shortest = processor.size.get("shortest_edge") if isinstance(processor.size, dict) else getattr(
                processor.size, "shortest_edge", None)
            processor.size = ({"shortest_edge": round(shortest * size / min(crop_h, crop_w))} if shortest
                              else _square(size))
    else:
        processor.size = _square(size)
    if getattr(processor, "crop_size", None):
        processor.crop_size = _square(size)


def _processor_settings(processor: Any) -> dict[str, Any]:
    keys = ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop", "do_normalize")
    out = {}
    for k in keys:
        v = getattr(processor, k, None)
        if v is None:
            continue
        if hasattr(v, "items"):
            v = {a: b for a, b in dict(v).items() if b is not None}
        out[k] = v if isinstance(v, (bool, int, float, str, dict)) else (list(v) if hasattr(v, "__iter__") else str(v))
    return out


def _direct_resize(processor: Any) -> tuple[int, int] | None:
    """(height, width) when the processor only resizes to a fixed size, rescales and normalises (ViT-like:
    no crop, no padding), so :func:`resize_normalize` reproduces it; None for anything else."""
    height, width = _height_width(getattr(processor, "size", None))
    simple = (getattr(processor, "do_resize", False) and height and width
              and not getattr(processor, "do_center_crop", False) and not getattr(processor, "do_pad", False)
              and getattr(processor, "do_rescale", False) and getattr(processor, "image_mean", None) is not None
              and getattr(processor, "image_std", None) is not None)
    return (int(height), int(width)) if simple else None


def resize_uint8(images: list[Any], height: int, width: int, resample: Any) -> np.ndarray:
    """Pillow images resized to ``height × width`` as one uint8 array ``[B, height, width, 3]``: numpy and
    Pillow only, so it can run in the cache builder's reading thread (:meth:`ModalityEncoder.stage`)."""
    return np.stack([np.asarray(im.resize((width, height), resample=resample)) for im in images])


def normalize_uint8(arr: np.ndarray, scale: float, mean: Any, std: Any, normalize: bool = True) -> torch.Tensor:
    """``((arr · scale) − mean) / std`` of uint8 images ``[B, H, W, 3]`` as float32 ``[B, 3, H, W]``
    (channels-last memory) in one fused tensor pass."""
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)  # channels-last [B, 3, H, W] uint8
    if not normalize:
        return x.float().mul_(scale).contiguous()
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # one constant for every channel (EfficientNet's 127/128, ViT's 0.5/0.5): one pass from uint8 over
        # contiguous memory, 2 ms of the 4 ms a batch of 32 took per channel (the same bits on the CPUs of
        # docs/results.md §3v; for EfficientNet every intermediate value is exact)
        inv = 1.0 / torch.tensor(float(std[0]), dtype=torch.float32)
        return torch.addcmul(-torch.tensor(float(mean[0]), dtype=torch.float32) * inv, x, inv * scale)
    x = x.float()
    inv_std = 1.0 / torch.tensor(std, dtype=torch.float32)[:, None, None]
    shift = -torch.tensor(mean, dtype=torch.float32)[:, None, None] * inv_std
    return torch.addcmul(shift, x, inv_std * scale)


def resize_normalize(images: list[Any], height: int, width: int, resample: Any, scale: float,
                     mean: Any, std: Any, normalize: bool = True) -> torch.Tensor:
    """What a ViT image processor does, in one Pillow resize per image and one fused tensor pass per batch:
    ``((resize(image) · scale) − mean) / std`` as float32 [B, 3, height, width]. Same Pillow resampling
    as the processor, so the pixels agree to float rounding (about 1e-7), at about three times the speed.
    :func:`resize_uint8` then :func:`normalize_uint8`."""
    return normalize_uint8(resize_uint8(images, height, width, resample), scale, mean, std, normalize)


class ImageEncoder(ModalityEncoder):
    """Cover images as RGB, resized by the ViT image processor (or its exact fast equivalent)."""

    modality = "image"
    per_item_inputs = True

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        model_size = int(info.hf_config.image_size)
        if info.random_init:
            self.processor = _processor_class("ViTImageProcessor")(size=_square(model_size))
        else:
            self.processor = _load_image_processor(info)
            if not spec.image_size:
                _check_output_size(self.processor, info, model_size, "images",
                                   f"set encoders.image.image_size={model_size} to feed it that size, or fix the "
                                   "folder's preprocessor_config.json")
            if spec.image_size:
                _resize_to(self.processor, spec.image_size)
        self.image_size = spec.image_size or model_size
        if self.image_size != model_size:
            self.model_kwargs["interpolate_pos_encoding"] = True
        self.direct_size = _direct_resize(self.processor)
        """Set when the processor is ViT-like (resize, rescale, normalise): :func:`resize_normalize` then
        does the same work directly (the processor's numpy round trips cost more than the small ViT)."""

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        return load_image(catalogue.path(record, "image"), record.item_id)

    def placeholder(self) -> Any:
        from PIL import Image

        return Image.new("RGB", (self.image_size, self.image_size))

    def _resample(self) -> Any:
        resample = getattr(self.processor, "resample", None)
        if resample is None:  # the ViT processors' default
            from PIL.Image import Resampling

            resample = Resampling.BILINEAR
        return resample

    @property
    def finish_in_model_thread(self) -> bool:
        """Where the processor is resized directly (and ``process`` is this class's): staged as uint8."""
        return self.direct_size is not None and not self._overrides_process(ImageEncoder)

    def stage(self, item: Any) -> Any:
        return self._resize(item) if self.finish_in_model_thread else super().stage(item)

    def finish(self, staged: list[Any]) -> dict[str, torch.Tensor]:
        return self._normalize(staged) if self.finish_in_model_thread else super().finish(staged)

    def _resize(self, item: Any) -> np.ndarray:
        assert self.direct_size is not None
        return resize_uint8([item], *self.direct_size, self._resample())

    def _normalize(self, resized: list[np.ndarray]) -> dict[str, torch.Tensor]:
        p = self.processor
        pixels = normalize_uint8(np.concatenate(resized), float(p.rescale_factor), p.image_mean, p.image_std,
                                 bool(getattr(p, "do_normalize", True)))
        return {"pixel_values": pixels}

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        if self.direct_size is not None:
            return self._normalize([self._resize(m) for m in media])
        return {"pixel_values": self.processor(list(media), return_tensors="pt")["pixel_values"]}

    def processor_settings(self) -> dict[str, Any]:
        return _processor_settings(self.processor)


class VideoEncoder(ModalityEncoder):
    """Video clips as ``num_frames`` sampled RGB frames, through the VideoMAE processor.

    A VideoMAE checkpoint takes frames of its own size only, so ``encoders.video.image_size`` is 0 or that size.
    Set, it makes the processor produce that size as ``encoders.image.image_size`` does (:func:`_resize_to`):
    a processor that resizes the shortest edge and then centre-crops keeps its ratio of resize to crop, so a
    folder whose processor makes frames of another size (resize 80, crop 64 for a 32 px model) is fed 32 px
    crops of the same share of the frame (resize 40, crop 32), not refused; on a processor already at the
    model's size it changes nothing."""

    modality = "video"
    per_item_inputs = True

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        cfg = info.hf_config
        self.num_frames = int(cfg.num_frames)
        if spec.num_frames and spec.num_frames != self.num_frames:
            raise ValueError(
                f"{info.name} takes {self.num_frames} frames; encoders.video.num_frames={spec.num_frames} "
                "does not fit it (set 0 to use the model's)"
            )
        model_size = int(cfg.image_size)
        if spec.image_size and spec.image_size != model_size:
            raise ValueError(f"{info.name} takes {model_size}px frames; encoders.video.image_size={spec.image_size}")
        if info.random_init:
            self.processor = _processor_class("VideoMAEImageProcessor")(
                size={"shortest_edge": model_size}, crop_size=_square(model_size)
            )
        else:
            self.processor = _load_image_processor(info)
            if spec.image_size:  # the model's own size (checked above), fed as images are (see _resize_to)
                _resize_to(self.processor, spec.image_size)
            else:
                _check_output_size(self.processor, info, model_size, "frames",
                                   f"set encoders.video.image_size={model_size} to feed it that size, or fix the "
                                   "folder's preprocessor_config.json")
        self.image_size = model_size

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        return load_video(catalogue.path(record, "video"), self.num_frames, self.spec.frame_sampling, record.item_id)

    def placeholder(self) -> Any:
        return [np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)] * self.num_frames

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.processor([list(v) for v in media], return_tensors="pt")["pixel_values"]}

    def processor_settings(self) -> dict[str, Any]:
        return _processor_settings(self.processor) | {"num_frames": self.num_frames}
