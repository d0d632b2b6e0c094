"""Inputs for the backbones: tokenisation of item text and preprocessing of item images.

IISAN (Fu et al., SIGIR 2024), spec ``iisan.md`` §1.1: item titles are lower-cased, truncated
and padded to 30 tokens for ``bert-base-uncased``; images are resized to 224 x 224 and each
channel is normalised with mean 0.5 and std 0.5 — these are the defaults of
:class:`ImagePreprocessor` when a checkpoint ships no ``preprocessor_config.json``.

Tokenizers come from ``transformers.AutoTokenizer`` reading a local directory (never the
network). Images are resized with PIL, as HF's image processors do, so the pixel values agree
with ``ViTImageProcessor`` / ``CLIPImageProcessor`` for the same settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.backbones.hf import CheckpointError

PREPROCESSOR_FILE = "preprocessor_config.json"
# What a Hugging Face tokenizer is read from (fast tokenizer file first, then the slow ones).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")

# IISAN's image normalisation (spec §1.1).
IISAN_IMAGE_SIZE = 224
IISAN_IMAGE_MEAN = (0.5, 0.5, 0.5)
IISAN_IMAGE_STD = (0.5, 0.5, 0.5)
IISAN_TEXT_LENGTH = 30


def load_tokenizer(ckpt_dir: str | os.PathLike):
    """Loads the tokenizer stored in a checkpoint directory (offline: ``local_files_only``).

    Raises:
      CheckpointError: the directory does not exist or holds no tokenizer files.
    """
    from transformers import AutoTokenizer

    path = Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"tokenizer directory {str(path)!r} does not exist", path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"no tokenizer in {str(path)!r}: none of {', '.join(TOKENIZER_FILES)} "
                              "(download the checkpoint's tokenizer files with its weights)", path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"no usable tokenizer in {str(path)!r}: {e}", path) from e


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = IISAN_TEXT_LENGTH,
             lowercase: bool = False) -> dict[str, np.ndarray]:
    """Tokenises, truncates and right-pads a batch of texts to exactly ``max_length`` tokens.

    Args:
      tokenizer: a HF tokenizer (:func:`load_tokenizer`).
      texts: B strings (a bare string is rejected: it would be split into characters).
      max_length: T; special tokens ([CLS], [SEP]) count towards it.
      lowercase: lower-case first (IISAN lower-cases titles; uncased tokenizers do it anyway).

    Returns:
      ``{"input_ids": [B, T] int32, "attention_mask": [B, T] int32}`` plus
      ``"token_type_ids": [B, T] int32`` when the tokenizer produces them. Padding uses the
      tokenizer's pad id, or 0 (masked) when it has none.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (room for special tokens), got {max_length}")
    texts = [t.lower() for t in texts] if lowercase else list(texts)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    if getattr(tokenizer, "pad_token_id", None) is None:
        # Decoder tokenizers (Llama's) often define no padding token: pad with id 0 as
        # IISAN-Versa's released code does (spec §2.3); the mask marks those positions.
        enc = tokenizer(texts, max_length=max_length, padding=False, truncation=True)
        out = {k: np.zeros((len(texts), max_length), np.int32) for k in keys if k in enc}
        for k, arr in out.items():
            for i, row in enumerate(enc[k]):
                arr[i, :len(row)] = row
        return out
    enc = tokenizer(texts, max_length=max_length, padding="max_length", truncation=True, return_tensors="np")
    # JAX's default integer width is 32 bits; int64 would be truncated with a warning anyway.
    return {k: np.asarray(v, dtype=np.int32) for k, v in enc.items() if k in keys}


def _resample(value: Any):
    from PIL import Image

    if value is None:
        return Image.Resampling.BILINEAR
    try:
        return Image.Resampling(int(value))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{PREPROCESSOR_FILE}: resample {value!r} is not a PIL resampling filter") from e


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
    """PIL images -> normalised float32 ``[B, H, W, C]`` arrays for :class:`ViTEncoder`.

    Steps (each switchable, as in HF image processors): convert to RGB; resize (to
    ``size = (H, W)``, or the shorter side to ``shortest_edge`` keeping the aspect ratio);
    centre crop to ``crop_size``; multiply by ``rescale_factor``; ``(x - mean) / std``.

    Attributes:
      size: ``(height, width)`` after resizing (ignored when ``shortest_edge`` is set).
      shortest_edge: resize so that the shorter side has this length (CLIP-style), or None.
      crop_size: ``(height, width)`` of the centre crop when ``do_center_crop``.
      image_mean, image_std: per-channel statistics applied after rescaling.
      rescale_factor: usually 1/255.
      resample: PIL filter (``PIL.Image.Resampling`` value; 2 = bilinear).
    """

    size: tuple[int, int] = (IISAN_IMAGE_SIZE, IISAN_IMAGE_SIZE)
    shortest_edge: int | None = None
    crop_size: tuple[int, int] | None = None
    image_mean: tuple[float, ...] = IISAN_IMAGE_MEAN
    image_std: tuple[float, ...] = IISAN_IMAGE_STD
    rescale_factor: float = 1.0 / 255.0
    resample: int = 2
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    def __post_init__(self):
        if len(self.image_mean) != len(self.image_std):
            raise ValueError(f"image_mean {self.image_mean} and image_std {self.image_std} differ in length")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must be non-zero, got {self.image_std}")
        if self.do_center_crop and self.crop_size is None:
            raise ValueError("do_center_crop is set but crop_size is missing")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of every output image, or None if it depends on the input aspect ratio."""
        if self.do_center_crop:
            return tuple(self.crop_size)
        if self.do_resize and self.shortest_edge is None:
            return tuple(self.size)
        return None

    @classmethod
    def from_dir(cls, ckpt_dir: str | os.PathLike | None = None, **overrides) -> "ImagePreprocessor":
        """Reads ``<ckpt_dir>/preprocessor_config.json``; IISAN defaults if absent (or no dir).

        Understands HF keys ``size`` (int, ``{"height", "width"}`` or ``{"shortest_edge"}``),
        ``crop_size``, ``image_mean``, ``image_std``, ``rescale_factor``, ``resample`` and the
        ``do_*`` switches. ``overrides`` set any field afterwards.
        """
        fields: dict[str, Any] = {}
        path = None if ckpt_dir is None else Path(ckpt_dir) / PREPROCESSOR_FILE
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}", ckpt_dir) from e
            fields = cls._fields_from_hf(raw, path)
        fields.update(overrides)
        return cls(**fields)

    @staticmethod
    def _fields_from_hf(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
        def hw(value: Any, key: str) -> tuple[int, int] | int:
            if isinstance(value, int):
                return (value, value)
            if isinstance(value, Mapping) and "height" in value and "width" in value:
                return (int(value["height"]), int(value["width"]))
            if isinstance(value, Mapping) and "shortest_edge" in value and key == "size":
                return int(value["shortest_edge"])
            raise ValueError(f"{str(path)!r}: unsupported {key!r} value {value!r}")

        fields: dict[str, Any] = {}
        if "size" in raw:
            size = hw(raw["size"], "size")
            if isinstance(size, int):
                fields["shortest_edge"] = size
            else:
                fields["size"] = size
        if raw.get("crop_size") is not None:
            fields["crop_size"] = hw(raw["crop_size"], "crop_size")
        for key in ("image_mean", "image_std"):
            if raw.get(key) is not None:
                fields[key] = tuple(float(v) for v in raw[key])
        if raw.get("rescale_factor") is not None:
            fields["rescale_factor"] = float(raw["rescale_factor"])
        if raw.get("resample") is not None:
            fields["resample"] = int(_resample(raw["resample"]))
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if raw.get(key) is not None:
                fields[key] = bool(raw[key])
        return fields

    def _one(self, image: Any) -> np.ndarray:
        from PIL import Image

        if self.do_convert_rgb and image.mode != "RGB":
            image = image.convert("RGB")
        if self.do_resize:
            if self.shortest_edge is not None:
                w, h = image.size
                short, long = min(w, h), max(w, h)
                # int() truncation, as HF's get_resize_output_image_size.
                new_long = int(self.shortest_edge * long / short)
                target = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)
            else:
                target = (self.size[1], self.size[0])  # PIL wants (width, height)
            if image.size != target:
                image = image.resize(target, resample=_resample(self.resample))
        x = np.asarray(image, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.do_center_crop:
            ch, cw = self.crop_size
            h, w = x.shape[:2]
            if ch > h or cw > w:
                raise ValueError(f"crop_size {self.crop_size} is larger than the resized image {(h, w)}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[top:top + ch, left:left + cw]
        if self.do_rescale:
            x = x * np.float32(self.rescale_factor)
        if self.do_normalize:
            if x.shape[-1] != len(self.image_mean):
                raise ValueError(
                    f"image has {x.shape[-1]} channels but image_mean has {len(self.image_mean)} entries"
                )
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return x.astype(np.float32)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """Preprocesses a batch.

        Args:
          images: B ``PIL.Image.Image`` objects (any size / mode).

        Returns:
          float32 ``[B, H, W, C]`` (NHWC, the layout :class:`ViTEncoder` takes).
        """
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
        if bad:
            raise TypeError(f"images[{bad[0]}] is {type(images[bad[0]]).__name__}, not a PIL image")
        if not images:
            raise ValueError("images is empty")
        arrays = [self._one(im) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"preprocessed images differ in shape {sorted(shapes)}; set size or crop_size")
        return np.stack(arrays)
