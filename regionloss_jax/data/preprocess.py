"""How a raw image or volume becomes model input, and a prediction a mask on the file's grid.

A :class:`Preprocessing` record states everything a dataset does to its files before the
model sees them. Dataset preparation, the input pipeline and ``python -m train.predict``
all apply it through the functions below, and every run saves it, so that a new image is
prepared exactly as the training images were.

What the model sees:

* **2-D images** keep their channels: grey-scale gives one channel, colour three (a dataset
  holding both uses three, grey images repeated). 8-bit values are divided by 255; 16-bit,
  32-bit and float images are clipped to their own 0.5 and 99.5 percentiles and scaled to
  ``[0, 1]`` (kept as uint16 on disk, so nothing below 1/65535 is lost). Then each channel
  is normalised, ``(x - mean) / std``.
* **Volumes** have one channel or several (nnU-Net's layout: one file per channel). Each
  channel is clipped to ``intensity_range`` (e.g. a CT window in Hounsfield units) or to its
  own 0.5 and 99.5 percentiles in that volume, scaled to ``[0, 1]``, optionally resampled to
  a voxel ``spacing`` (linear for images, nearest for labels, as nnU-Net does), then
  normalised.
* **One file per channel** (``channel_files`` of them, ``<case>_0000<file_ending>``, ...):
  the files' channels are stacked in channel-index order before anything else; 2-D images
  of several such files are scaled per channel, since each file has its own range.
* ``size`` set: every image is resized (2-D, bilinear) or fitted (3-D: resampled, or centre
  cropped / zero padded) to it. ``size`` unset: native resolution.

Predictions go back the same way in reverse: class probabilities are resampled linearly to
the file's own grid (areas cut away by a crop are background), then the argmax is taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from regionloss_jax.data.augment import Augment, sample_affine, warp

RESAMPLERS = ("pil", "affine")
FIT_MODES = ("resize", "crop_or_pad")
# Fields added with nnU-Net's layout, and their values for every dataset before it.
LAYOUT_DEFAULTS = {"channel_files": 0, "file_ending": ""}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
  """Everything that turns a file into model input (see the module docstring).

  Attributes:
    spatial_dims: 2 (images) or 3 (volumes).
    channels: input channels of the model.
    mean, std: per-channel normalisation of values scaled to ``[0, 1]``.
    bit_depth: 2-D only; 8 (stored uint8) or 16 (stored uint16).
    size: the ``(H, W)`` / ``(D, H, W)`` every image is brought to, or ``None`` (native).
    resampler: 2-D resizing: ``"pil"`` (Pillow bilinear, as folder preparation) or
      ``"affine"`` (the input pipeline's bilinear warp).
    fit_mode: 3-D with ``size``: ``"resize"`` or ``"crop_or_pad"``.
    spacing: 3-D: voxel spacing in mm, ``(D, H, W)`` order, resampled to before ``size``.
    intensity_range: 3-D: fixed ``(low, high)`` window (every channel's); ``None`` for
      per-volume, per-channel percentiles.
    channel_files: how an input is stored: 0, one file holding every channel (the folder
      and volumes layouts, the Medical Segmentation Decathlon's 4-D NIfTI); N >= 1, nnU-Net's
      N files per case, ``<case>_0000<file_ending>`` to ``<case>_{N-1:04d}<file_ending>``
      (one RGB ``_0000.png`` holds 3 channels).
    file_ending: with ``channel_files``, the dataset's file ending (``.nii.gz``, ``.png``...).
  """

  spatial_dims: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  bit_depth: int = 8
  size: tuple[int, ...] | None = None
  resampler: str = "pil"
  fit_mode: str = "resize"
  spacing: tuple[float, ...] | None = None
  intensity_range: tuple[float, float] | None = None
  channel_files: int = 0
  file_ending: str = ""

  def __post_init__(self):
    if self.spatial_dims not in (2, 3):
      raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
    if self.bit_depth not in (8, 16):
      raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
    if self.resampler not in RESAMPLERS:
      raise ValueError(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
    if self.fit_mode not in FIT_MODES:
      raise ValueError(f"fit_mode must be one of {FIT_MODES}, got {self.fit_mode!r}")
    if len(self.mean) != self.channels or len(self.std) != self.channels:
      raise ValueError(
        f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})"
      )
    for name in ("size", "spacing"):
      value = getattr(self, name)
      if value is not None and len(value) != self.spatial_dims:
        raise ValueError(f"{name}={tuple(value)} needs {self.spatial_dims} entries")
    if self.spacing is not None and self.spatial_dims != 3:
      raise ValueError("spacing is for volumes (spatial_dims=3)")
    if self.channel_files < 0 or self.channel_files > self.channels:
      raise ValueError(
        f"channel_files={self.channel_files} must be in [0, channels={self.channels}]"
      )
    if bool(self.channel_files) != bool(self.file_ending):
      raise ValueError("channel_files and file_ending go together (nnU-Net's layout)")

  def to_dict(self) -> dict:
    """The fields as JSON-ready values; fields left at ``LAYOUT_DEFAULTS`` are left out, so
    that the records and cache keys of datasets without them stay as they were."""
    values = dataclasses.asdict(self)
    for name, default in LAYOUT_DEFAULTS.items():
      if values[name] == default:
        del values[name]
    return values

  @classmethod
  def from_dict(cls, values: dict) -> Preprocessing:
    fields = {f.name for f in dataclasses.fields(cls)}

    def cast(value):
      return tuple(value) if isinstance(value, list) else value

    return cls(**{k: cast(v) for k, v in values.items() if k in fields})


# ---------------------------------------------------------------------------------------
# 2-D images


def value_scale(dtype) -> float:
  """What stored image values are divided by to lie in ``[0, 1]``: 255 for uint8, 65535 for
  uint16 (16-bit images), 1 for floats (volumes, scaled at preparation)."""
  dtype = np.dtype(dtype)
  if dtype == np.uint8:
    return 255.0
  if dtype == np.uint16:
    return 65535.0
  return 1.0


def scale_to_unit(array: np.ndarray, intensity_range: Sequence[float] | None = None):
  """Clip to ``intensity_range`` (default: the array's 0.5 and 99.5 percentiles) and scale to
  float32 ``[0, 1]``."""
  array = np.asarray(array, np.float32)
  lo, hi = intensity_range or np.percentile(array, (0.5, 99.5))
  return np.clip((array - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)


def scale_channels(array: np.ndarray, intensity_range: Sequence[float] | None = None):
  """``array (..., C)`` with each channel scaled by :func:`scale_to_unit` on its own (its
  own percentiles): channels such as T2 and ADC have unrelated ranges."""
  return np.stack(
    [scale_to_unit(array[..., c], intensity_range) for c in range(array.shape[-1])], axis=-1
  )


def stored_image(image: np.ndarray, *, channels: int, bit_depth: int) -> np.ndarray:
  """An image from :func:`regionloss_jax.data.files.read_image` in the stored form:
  ``channels`` channels, uint8 (``bit_depth`` 8) or uint16 (16).

  Raises ``ValueError`` for a colour image when the model takes one channel.
  """
  if image.shape[-1] != channels:
    if image.shape[-1] != 1:
      raise ValueError(f"has {image.shape[-1]} channels; the model takes {channels}")
    image = np.repeat(image, channels, axis=-1)
  if image.dtype == np.uint8:
    return image if bit_depth == 8 else image.astype(np.uint16) * np.uint16(257)
  unit = scale_to_unit(image)
  top = 255 if bit_depth == 8 else 65535
  return np.round(unit * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


def resize_image(image: np.ndarray, size: Sequence[int], *, resampler: str = "pil"):
  """``image (H, W, C)`` resized bilinearly to ``size = (H', W')``, same dtype."""
  size = tuple(int(s) for s in size)
  if image.shape[:2] == size:
    return image
  if resampler == "affine":
    matrix, offset = sample_affine(np.random.default_rng(0), image.shape[:2], size, Augment.none())
    warped, _ = warp(image, np.zeros(image.shape[:2], np.uint8), matrix, offset, size)
    return warped
  h, w = size
  if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
    resized = np.asarray(
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize(
        (w, h), Image.BILINEAR
      )
    )
    return resized.reshape(h, w, image.shape[-1])
  channels = [
    np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((w, h), Image.BILINEAR))
    for c in range(image.shape[-1])
  ]
  out = np.stack(channels, axis=-1)
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    out = np.clip(np.round(out), info.min, info.max)
  return out.astype(image.dtype)


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Class ids ``(H, W)`` resized by nearest neighbour (Pillow's)."""
  h, w = (int(s) for s in size)
  if mask.shape == (h, w):
    return mask
  return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))


# ---------------------------------------------------------------------------------------
# Volumes, and resampling of any channel-last array


def resample(array: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
  """The leading ``len(shape)`` axes of ``array`` resampled to exactly ``shape`` (order 0:
  nearest, 1: linear; pixel centres aligned, edges replicated); trailing axes untouched."""
  shape = tuple(int(s) for s in shape)
  n = len(shape)
  if array.shape[:n] == shape:
    return array
  zoom = [t / s for t, s in zip(shape, array.shape[:n], strict=True)]
  if array.ndim == n:
    return ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
  flat = array.reshape(*array.shape[:n], -1)
  out = np.stack(
    [
      ndimage.zoom(flat[..., c], zoom, order=order, mode="nearest", grid_mode=True)
      for c in range(flat.shape[-1])
    ],
    axis=-1,
  )
  return out.reshape(*shape, *array.shape[n:])


def fit_shape(
  array: np.ndarray, shape: Sequence[int], *, mode: str, order: int, fill=0
) -> np.ndarray:
  """The leading axes of ``array`` brought to ``shape``: resampled (``resize``) or centre
  cropped / padded with ``fill`` (``crop_or_pad``, its own inverse)."""
  shape = tuple(int(s) for s in shape)
  if array.shape[: len(shape)] == shape:
    return array
  if mode == "resize":
    return resample(array, shape, order=order)
  out = np.empty(shape + array.shape[len(shape) :], array.dtype)
  out[...] = fill
  src, dst = [], []
  for size, target in zip(array.shape, shape, strict=False):
    if size >= target:
      start = (size - target) // 2
      src.append(slice(start, start + target))
      dst.append(slice(0, target))
    else:
      start = (target - size) // 2
      src.append(slice(0, size))
      dst.append(slice(start, start + size))
  out[tuple(dst)] = array[tuple(src)]
  return out


def spaced_shape(
  shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
  """The grid a volume of ``shape`` voxels of ``spacing`` mm has at ``target`` mm."""
  return tuple(
    max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)
  )


def grid_shapes(
  prep: Preprocessing, original_shape: Sequence[int], spacing: Sequence[float] | None = None
) -> list[tuple[int, ...]]:
  """The spatial shape after each step, from the file's own to the model's grid."""
  shapes = [tuple(int(s) for s in original_shape)]
  if prep.spacing is not None:
    shapes.append(spaced_shape(shapes[-1], spacing or (1.0,) * prep.spatial_dims, prep.spacing))
  if prep.size is not None:
    shapes.append(tuple(prep.size))
  return shapes


def grid_spacing(
  prep: Preprocessing | None, original_shape: Sequence[int], spacing: Sequence[float] | None
) -> tuple[float, ...] | None:
  """The pixel size in mm of the model's grid (:func:`grid_shapes`' last) for a file of
  ``original_shape`` pixels of ``spacing`` mm; ``None`` when the file has no spacing (2-D
  images), so that distances stay in pixels.

  Resampling to ``prep.spacing`` gives that spacing; resizing to ``prep.size`` stretches it
  by the ratio of the shapes; cropping or padding keeps it.
  """
  if spacing is None:
    return None
  spacing = tuple(float(s) for s in spacing)
  if prep is None:
    return spacing
  shapes = grid_shapes(prep, original_shape, spacing)
  if prep.spacing is not None:
    spacing = tuple(float(s) for s in prep.spacing)
  if prep.size is not None and prep.fit_mode == "resize":
    spacing = tuple(
      s * before / after for s, before, after in zip(spacing, shapes[-2], shapes[-1], strict=True)
    )
  return spacing


def stored_input(
  prep: Preprocessing, array: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
  """A file's array (from :mod:`regionloss_jax.data.files`) on the model's grid, in the form
  a prepared dataset stores it: uint8 / uint16 ``(H, W, C)`` images, float32 ``(D, H, W)``
  or ``(D, H, W, C)`` volumes in ``[0, 1]`` (:func:`stored_volume`).

  Raises ``ValueError`` when the array's rank or channels cannot be the model's.
  """
  if prep.spatial_dims == 2:
    if array.ndim == 2:
      array = array[..., None]
    if array.ndim != 3:
      raise ValueError(f"expected a 2-D image (H, W) or (H, W, C), got shape {array.shape}")
    if array.shape[-1] == 4 and prep.channel_files <= 1:  # RGBA: alpha dropped, as read_image
      array = array[..., :3]
    if prep.channel_files > 1:
      stored = np.concatenate(
        [
          stored_image(array[..., c : c + 1], channels=1, bit_depth=prep.bit_depth)
          for c in range(array.shape[-1])
        ],
        axis=-1,
      )
      if stored.shape[-1] != prep.channels:
        raise ValueError(f"has {stored.shape[-1]} channels; the model takes {prep.channels}")
    else:
      stored = stored_image(array, channels=prep.channels, bit_depth=prep.bit_depth)
    if prep.size is not None:
      stored = resize_image(stored, prep.size, resampler=prep.resampler)
    return stored
  return stored_volume(prep, array, spacing)


def stored_volume(
  prep: Preprocessing, array: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
  """A volume ``(D, H, W)`` or ``(D, H, W, C)`` on the model's grid, each channel scaled to
  float32 ``[0, 1]``; the channel axis is kept when given (``(D, H, W)`` stays 3-D).

  Raises ``ValueError`` for another rank, or ``C`` other than ``prep.channels``.
  """
  if array.ndim not in (3, 4):
    raise ValueError(f"expected a volume (D, H, W) or (D, H, W, C), got shape {array.shape}")
  channels = array.shape[-1] if array.ndim == 4 else 1
  if channels != prep.channels:
    raise ValueError(f"has {channels} channel(s); the model takes {prep.channels}")
  unit = scale_channels(array if array.ndim == 4 else array[..., None], prep.intensity_range)
  shapes = grid_shapes(prep, array.shape[:3], spacing)
  if prep.spacing is not None:
    unit = resample(unit, shapes[1], order=1)
  if prep.size is not None:
    unit = fit_shape(unit, prep.size, mode=prep.fit_mode, order=1)
  return unit if array.ndim == 4 else unit[..., 0]


def model_input(
  prep: Preprocessing, array: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
  """A file's array as the model's float32 input ``(*spatial, channels)``: the stored form
  (:func:`stored_input`) scaled to ``[0, 1]`` and normalised per channel, as the input
  pipeline does with prepared examples."""
  stored = stored_input(prep, array, spacing)
  if prep.spatial_dims == 3 and stored.ndim == 3:
    stored = stored[..., None]
  unit = stored.astype(np.float32) / value_scale(stored.dtype)
  mean = np.asarray(prep.mean, np.float32)
  std = np.asarray(prep.std, np.float32)
  return ((unit - mean) / std).astype(np.float32)


def to_original(
  prep: Preprocessing,
  probs: np.ndarray,
  original_shape: Sequence[int],
  spacing: Sequence[float] | None = None,
) -> np.ndarray:
  """Class probabilities ``(*model grid, K)`` taken back to the file's grid ``(*original,
  K)``, undoing :func:`model_input`'s geometry (linear resampling; cropped-away regions
  become background: probability 1 for class 0)."""
  shapes = grid_shapes(prep, original_shape, spacing)
  probs = np.asarray(probs, np.float32)
  if tuple(probs.shape[:-1]) != shapes[-1]:
    raise ValueError(
      f"probabilities of spatial shape {probs.shape[:-1]} do not match the "
      f"model grid {shapes[-1]} of an input of shape {tuple(original_shape)}"
    )
  steps = list(zip(shapes[:-1], shapes[1:], strict=True))
  for index, (before, _) in reversed(list(enumerate(steps))):
    fitting = prep.size is not None and index == len(steps) - 1
    if fitting and prep.spatial_dims == 3 and prep.fit_mode == "crop_or_pad":
      background = np.zeros(probs.shape[-1], np.float32)
      background[0] = 1.0
      probs = fit_shape(probs, before, mode="crop_or_pad", order=1, fill=background)
    else:
      probs = resample(probs, before, order=1)
  return probs
