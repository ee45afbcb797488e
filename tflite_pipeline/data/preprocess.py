"""THE preprocessing spec: one `PreprocessSpec` turns an image file into model input for training,
calibration, evaluation and (through `preprocessing.json`) the Android app:

    decode with Pillow -> EXIF orientation -> RGB (or L) -> bilinear resize to the model input
    -> normalize: minus_one_to_one  x = p / 127.5 - 1
                  zero_to_one       x = p / 255
                  raw               x = p            (the model normalizes inside itself)
                  mean_std          x = (p / 255 - mean) / std   (per channel)

A file that does not decode is a `DataError` naming it, also from inside tf.data (`data_errors`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tflite_pipeline.config.sections import AUTO_NORMALIZATION, NORMALIZATIONS, PreprocessConfig
from tflite_pipeline.errors import DataError


@dataclass(frozen=True)
class PreprocessSpec:
    """Size, channels and normalization of a model's input; saved as `preprocessing.json`."""

    height: int
    width: int
    channels: int = 3
    normalization: str = "minus_one_to_one"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NHWC"
    source: str = ""   # why this normalization: the recipe's setting, or what the model does to its input

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"Received channels={self.channels}; expected 1 (grayscale) or 3 (RGB).")
        if self.normalization not in NORMALIZATIONS:
            raise DataError(f"Received normalization={self.normalization!r}; expected one of {NORMALIZATIONS}.")
        if self.normalization == "mean_std" and (len(self.mean) not in (1, self.channels) or
                                                 len(self.std) != len(self.mean)):
            raise DataError(f"Received mean={self.mean}, std={self.std} for {self.channels} channels; "
                            "expected 1 or one-per-channel values of each.")

    @classmethod
    def from_config(cls, config: PreprocessConfig, input_shape: Sequence[int], *,
                    model_normalizes: str | None = None) -> PreprocessSpec:
        """Combine a recipe's normalization with a model input shape `(height, width, channels)`.

        `normalization = "auto"` becomes `raw` when `model_normalizes` says what normalizes the input inside the
        model (`rebuild.input_preprocessing`), else `minus_one_to_one`; `source` records why."""
        height, width, channels = (int(d) for d in input_shape)
        normalization, source = config.normalization, "the recipe (preprocess.normalization)"
        if normalization == AUTO_NORMALIZATION:
            normalization = "raw" if model_normalizes else "minus_one_to_one"
            source = (f"auto: the model normalizes its own input ({model_normalizes}), so it takes raw pixels"
                      if model_normalizes else "auto: the model has no preprocessing layer at its input; "
                      "MobileNetV2's [-1, 1]")
        return cls(height=height, width=width, channels=channels, normalization=normalization,
                   mean=tuple(config.mean), std=tuple(config.std), source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})

    @classmethod
    def read_json(cls, path: str | Path) -> PreprocessSpec:
        """Read a `preprocessing.json` written by a run."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"Cannot read preprocessing spec {str(path)!r}: {error}.") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["formula"] = self.formula()
        return out

    def formula(self) -> str:
        return {
            "minus_one_to_one": "x = pixel / 127.5 - 1",
            "zero_to_one": "x = pixel / 255",
            "raw": "x = pixel",
            "mean_std": "x = (pixel / 255 - mean[c]) / std[c]",
        }[self.normalization]

    def pixel_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalization as `x = (pixel - mean) / std` on the 0-255 scale (TFLite metadata's form)."""
        if self.normalization == "minus_one_to_one":
            return (127.5,), (127.5,)
        if self.normalization == "zero_to_one":
            return (0.0,), (255.0,)
        if self.normalization == "raw":
            return (0.0,), (1.0,)
        return tuple(255.0 * m for m in self.mean), tuple(255.0 * s for s in self.std)

    def folded(self) -> PreprocessSpec:
        """The spec of this model with its normalization folded inside (`convert.pixel_input_model`): raw pixels."""
        if self.normalization == "raw":
            return self
        return replace(self, normalization="raw", mean=(), std=(),
                       source=f"normalization folded into the model (its float model takes {self.formula()})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def load_pixels(self, path: str | Path) -> np.ndarray:
        """Decode one image file to uint8 `(height, width, channels)`, or raise `DataError` naming it."""
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
                image = _to_mode(image, "RGB" if self.channels == 3 else "L")
                image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except DECODE_ERRORS as error:
            raise decode_error(path, error) from None
        return pixels.reshape(self.height, self.width, self.channels)

    def load_rgb(self, path: str | Path) -> np.ndarray:
        """Decode to uint8 RGB at the model's height and width, whatever the model's channels: what the
        Android app hands its preprocessing, which then converts to gray itself (`from_rgb`)."""
        return replace(self, channels=3).load_pixels(path)

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB `(h, w, 3)` -> the model's channels. Gray is Pillow's luma in integers,
        `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`, which the app's Kotlin repeats exactly."""
        if self.channels == 3:
            return rgb
        wide = rgb.astype(np.int64)
        luma = (wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000) >> 16
        return luma.astype(np.uint8)[..., None]

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> float32 model input, per `normalization`."""
        x = pixels.astype(np.float32)
        if self.normalization == "minus_one_to_one":
            return x / np.float32(127.5) - np.float32(1.0)
        if self.normalization == "zero_to_one":
            return x / np.float32(255.0)
        if self.normalization == "raw":
            return x
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x / np.float32(255.0) - mean) / std

    def load(self, path: str | Path) -> np.ndarray:
        """One image file -> float32 model input."""
        return self.normalize(self.load_pixels(path))


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow mode (palette, 16-bit, CMYK, RGBA, ...) to 8-bit RGB or L. Alpha is dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


DECODE_ERROR_TAG = "tflite_pipeline.DataError: "


# what Pillow raises on bad files; DecompressionBombError: a header declaring more than Image.MAX_IMAGE_PIXELS
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_error(path: str | Path, error: Exception) -> DataError:
    return DataError(f"Cannot decode image {str(path)!r} ({type(error).__name__}: {error}); "
                     "remove or replace the file.")


@contextlib.contextmanager
def data_errors():
    """Re-raise a decoding failure inside tf.data (an OpError) as the `DataError` it started as."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as error:
        message = error.message
        if DECODE_ERROR_TAG in message:
            raise DataError(message.split(DECODE_ERROR_TAG, 1)[1].splitlines()[0]) from None
        raise
