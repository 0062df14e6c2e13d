"""``imbalanced_shapes``: a procedural segmentation dataset whose region sizes span decades.

Two configs:

* ``binary`` (lesion-like): 0 to 6 blobs with irregular outlines on a textured, noisy
  background. The total foreground proportion of an image is drawn log-uniformly in
  ``[0.1%, 40%]``; about one image in ten has no lesion.
* ``multiclass``: background plus ``organ`` (one large region, ~20-30% of the image),
  ``cyst`` (a few medium ellipses, ~2-6%), ``vessel`` (thin curved strips, ~1-2%) and
  ``nodule`` (tiny dots, ~0.2-0.6%). Each class is present in some images only; the
  organ's intensities overlap the background's, the small classes stand out from their
  surroundings (dark cysts, bright vessels and nodules), and the image is blurred and noisy.

Every example comes from its own generator seeded by ``(seed, split, index)``: preparation
is deterministic and does not depend on the order examples are written. Features are
``image`` uint8 ``(H, W, 3)`` and ``segmentation_mask`` uint8 ``(H, W, 1)``, as TFDS
``Tensor`` features written to ``array_record`` files, so neither writing nor reading needs
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from regionloss_jax.data import cache, preprocess
from regionloss_jax.data.source import SegmentationData

TASKS = ("binary", "multiclass")
CLASS_NAMES = {
  "binary": ("background", "lesion"),
  "multiclass": ("background", "organ", "cyst", "vessel", "nodule"),
}
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_SIZES = (2000, 200, 200)
DEFAULT_IMAGE_SIZE = 96
BINARY_PROPORTION_RANGE = (0.001, 0.4)


# ---------------------------------------------------------------------------------------
# Rendering: pure functions of a random generator.


def _smooth_noise(rng, shape, sigma):
  """Zero-mean, unit-std Gaussian-filtered white noise: a texture with scale ``sigma``."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
  return field / (field.std() + 1e-8)


def _blob(rng, size, area, *, irregularity, centre=None, aspect=None):
  """Boolean ``(size, size)`` mask of a rotated ellipse with a wobbly outline and ``area`` px.

  The outline radius is ``r(theta) * (1 + sum_k a_k cos(k theta + phi_k))`` with a few
  random harmonics of amplitude ``irregularity``.
  """
  if aspect is None:
    aspect = math.exp(rng.uniform(-0.7, 0.7))
  radius_a = math.sqrt(area / math.pi * aspect)
  radius_b = math.sqrt(area / math.pi / aspect)
  if centre is None:
    margin = min(radius_a, radius_b, size / 4)
    centre = rng.uniform(margin, size - margin, 2)
  angle = rng.uniform(0, math.pi)
  extent = max(radius_a, radius_b) * (1 + 3 * irregularity) + 2
  lo = np.clip(np.floor(centre - extent), 0, size).astype(int)
  hi = np.clip(np.ceil(centre + extent) + 1, 0, size).astype(int)
  out = np.zeros((size, size), bool)
  if np.any(hi <= lo):
    return out
  yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float64)
  dy, dx = yy - centre[0], xx - centre[1]
  c, s = math.cos(angle), math.sin(angle)
  u, v = c * dx + s * dy, -s * dx + c * dy
  theta = np.arctan2(v / radius_b, u / radius_a)
  rho = np.hypot(u / radius_a, v / radius_b)
  wobble = np.ones_like(theta)
  for k in range(2, 6):
    wobble += (
      irregularity
      / (k - 1)
      * rng.uniform(0.3, 1.0)
      * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    )
  out[lo[0] : hi[0], lo[1] : hi[1]] = rho <= wobble
  return out


def _strip(rng, size, width, length):
  """Boolean ``(size, size)`` mask of a thin curved strip (a vessel) of given width/length."""
  start = rng.uniform(0.15 * size, 0.85 * size, 2)
  heading = rng.uniform(0, 2 * math.pi)
  curvature = rng.uniform(-0.08, 0.08)
  steps = max(int(length), 2)
  points = np.empty((steps, 2))
  point = start.copy()
  for i in range(steps):
    points[i] = point
    heading += curvature + rng.normal(0, 0.05)
    point = point + (math.sin(heading), math.cos(heading))
  yy, xx = np.mgrid[0:size, 0:size]
  distance = np.full((size, size), np.inf)
  for py, px in points[:: max(1, int(width // 2))]:
    distance = np.minimum(distance, (yy - py) ** 2 + (xx - px) ** 2)
  return distance <= (width / 2) ** 2


def _background(rng, size):
  """Float ``(size, size, 3)`` textured background in about ``[0, 1]``, random tint."""
  base = rng.uniform(0.3, 0.55)
  texture = 0.08 * _smooth_noise(rng, (size, size), size / 12) + 0.04 * _smooth_noise(
    rng, (size, size), 1.5
  )
  tint = rng.uniform(-0.08, 0.08, 3)
  return base + texture[..., None] + tint


def _finish(rng, image, *, blur, noise):
  """Blur the whole image, add pixel noise and quantise to uint8."""
  image = ndimage.gaussian_filter(image, (blur, blur, 0))
  image = image + rng.normal(0, noise, image.shape)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def render_binary(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """One ``binary`` example: uint8 image ``(size, size, 3)`` and 0/1 mask ``(size, size)``."""
  image = _background(rng, size)
  mask = np.zeros((size, size), bool)
  if rng.random() >= 0.1:
    count = int(rng.integers(1, 7))
    log_lo, log_hi = np.log(BINARY_PROPORTION_RANGE)
    total = math.exp(rng.uniform(log_lo, log_hi)) * size * size
    shares = rng.dirichlet(np.full(count, 1.5))
    for share in shares:
      mask |= _blob(rng, size, max(share * total, 2.0), irregularity=rng.uniform(0.05, 0.3))
    # A lesion is brighter or darker than its surroundings, with its own texture, so the
    # contrast varies from obvious to subtle.
    contrast = rng.choice([-1, 1]) * rng.uniform(0.08, 0.3)
    colour = contrast * np.array([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)])
    texture = 0.05 * _smooth_noise(rng, (size, size), 2.0)
    image = image + mask[..., None] * (colour + texture[..., None])
  pixels = _finish(rng, image, blur=rng.uniform(0.5, 1.2), noise=rng.uniform(0.02, 0.06))
  return pixels, mask.astype(np.uint8)


# (presence probability, intensity range). The organ's range overlaps the background's
# (0.3-0.6 plus texture), so no threshold separates them; the small classes stand out from
# whatever they lie on (dark cysts, bright vessels and nodules, told apart by shape), as
# lesions and vessels do in real images: a model can learn every class in a few minutes, and
# a loss that still misses them is biased, not blind.
_MULTICLASS_STYLE = {
  "organ": (0.85, (0.45, 0.7)),
  "cyst": (0.6, (0.08, 0.28)),
  "vessel": (0.6, (0.85, 1.05)),
  "nodule": (0.5, (0.9, 1.1)),
}


def render_multiclass(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """One ``multiclass`` example: uint8 image ``(size, size, 3)`` and mask of ids 0-4."""
  image = _background(rng, size)
  mask = np.zeros((size, size), np.uint8)
  n_pixels = size * size
  present = {name: rng.random() < p for name, (p, _) in _MULTICLASS_STYLE.items()}

  def paint(region, class_id, name, texture_sigma):
    lo, hi = _MULTICLASS_STYLE[name][1]
    value = rng.uniform(lo, hi) + rng.uniform(-0.05, 0.05, 3)
    texture = 0.05 * _smooth_noise(rng, (size, size), texture_sigma)
    image[region] = value + texture[region][:, None]
    mask[region] = class_id

  if present["organ"]:
    area = rng.uniform(0.2, 0.3) * n_pixels
    centre = rng.uniform(0.35 * size, 0.65 * size, 2)
    paint(_blob(rng, size, area, irregularity=0.12, centre=centre), 1, "organ", 4.0)
  if present["vessel"]:
    region = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 3))):
      region |= _strip(rng, size, width=rng.uniform(1.0, 2.2), length=rng.uniform(0.3, 0.8) * size)
    paint(region, 3, "vessel", 1.0)
  if present["cyst"]:
    region = np.zeros((size, size), bool)
    count = int(rng.integers(1, 4))
    for _ in range(count):
      area = rng.uniform(0.02, 0.05) * n_pixels / count
      region |= _blob(rng, size, area, irregularity=0.05, aspect=math.exp(rng.uniform(-0.3, 0.3)))
    paint(region, 2, "cyst", 2.0)
  if present["nodule"]:
    region = np.zeros((size, size), bool)
    count = int(rng.integers(1, 4))
    for _ in range(count):
      area = max(rng.uniform(0.002, 0.006) * n_pixels / count, 4.0)
      region |= _blob(rng, size, area, irregularity=0.02, aspect=1.0)
    paint(region, 4, "nodule", 1.0)
  pixels = _finish(rng, image, blur=rng.uniform(0.6, 1.2), noise=rng.uniform(0.03, 0.07))
  return pixels, mask


RENDERERS = {"binary": render_binary, "multiclass": render_multiclass}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of one example: a function of ``(seed, split, index)`` only."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def render(task: str, *, seed: int, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE):
  """Example ``index`` of ``split``: uint8 image ``(S, S, 3)`` and uint8 mask ``(S, S)``."""
  if task not in RENDERERS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  return RENDERERS[task](example_rng(seed, split, index), image_size)


# ---------------------------------------------------------------------------------------
# The TFDS builder.


@dataclasses.dataclass(kw_only=True)
class ImbalancedShapesConfig(tfds.core.BuilderConfig):
  """Builder config: the task, image size, examples per split and the base seed.

  The config ``name`` keys the prepared directory, so configs with different sizes must
  have different names (:func:`shapes_config` derives one).
  """

  task: str = "binary"
  image_size: int = DEFAULT_IMAGE_SIZE
  split_sizes: tuple[int, int, int] = DEFAULT_SPLIT_SIZES
  seed: int = 0


def shapes_config(
  task: str, *, image_size: int = DEFAULT_IMAGE_SIZE, split_sizes=DEFAULT_SPLIT_SIZES, seed: int = 0
) -> ImbalancedShapesConfig:
  """A config named after its options (the plain task name for the defaults)."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  if image_size < 16:
    raise ValueError(f"image_size must be at least 16, got {image_size}")
  split_sizes = tuple(int(n) for n in split_sizes)
  if len(split_sizes) != 3 or min(split_sizes) < 1:
    raise ValueError(
      f"split_sizes must be 3 positive counts (train, validation, test), got {split_sizes}"
    )
  name = task
  if (image_size, split_sizes, seed) != (DEFAULT_IMAGE_SIZE, DEFAULT_SPLIT_SIZES, 0):
    name = f"{task}_{image_size}px_{'-'.join(map(str, split_sizes))}_seed{seed}"
  return ImbalancedShapesConfig(
    name=name,
    task=task,
    image_size=image_size,
    split_sizes=split_sizes,
    seed=seed,
    description=f"{task}, {image_size}x{image_size} RGB",
  )


class ImbalancedShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder of ``imbalanced_shapes`` (not registered: build it from this class).

  Example::

    builder = ImbalancedShapes(config="multiclass", data_dir=...)
    builder.download_and_prepare()
    source = builder.as_data_source("train")
  """

  name = "imbalanced_shapes"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "First version.",
    "1.1.0": "multiclass: cysts darker, vessels and nodules brighter than "
    "their surroundings, so every class is learnable.",
  }
  BUILDER_CONFIGS = [shapes_config("binary"), shapes_config("multiclass")]

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
          "segmentation_mask": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
        }
      ),
      metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES[self.builder_config.task])),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
      split: self._generate_examples(split=split, count=count)
      for split, count in zip(SPLITS, self.builder_config.split_sizes, strict=True)
    }

  def _generate_examples(self, *, split, count):
    config = self.builder_config
    for index in range(count):
      image, mask = render(
        config.task, seed=config.seed, split=split, index=index, image_size=config.image_size
      )
      yield index, {"image": image, "segmentation_mask": mask[..., None]}


def load_imbalanced_shapes(
  task: str = "binary",
  *,
  split: str = "train",
  image_size: int = DEFAULT_IMAGE_SIZE,
  split_sizes=DEFAULT_SPLIT_SIZES,
  seed: int = 0,
  cache_dir=None,
) -> SegmentationData:
  """Prepare (once) and open a split of ``imbalanced_shapes``.

  Args:
    task: ``binary`` or ``multiclass``.
    split: ``train``, ``validation`` (or ``val``) or ``test``; TFDS slicing such as
      ``train[:10%]`` works too.
    image_size: side of the square images.
    split_sizes: examples in train, validation and test.
    seed: base seed of the procedural generation.
    cache_dir: cache root (see :func:`regionloss_jax.data.cache.cache_dir`); the files go in
      ``<cache_dir>/tfds``.

  Returns:
    A :class:`SegmentationData` over uint8 ``(S, S, 3)`` images and ``(S, S, 1)`` masks.
  """
  config = shapes_config(task, image_size=image_size, split_sizes=split_sizes, seed=seed)
  if config.name in TASKS:  # TFDS wants the name of a built-in config, not an equal copy.
    config = config.name
  builder = ImbalancedShapes(config=config, data_dir=str(cache.cache_dir(cache_dir) / "tfds"))
  builder.download_and_prepare()
  split = "validation" if split == "val" else split
  size = (image_size, image_size)
  mean, std = SegmentationData.mean, SegmentationData.std
  return SegmentationData(
    source=builder.as_data_source(split),
    class_names=tuple(builder.info.metadata["class_names"]),
    spatial_shape=size,
    info=builder.info,
    # A new image of another size is resized to the generated size, as the pipeline does.
    preprocessing=preprocess.Preprocessing(
      spatial_dims=2, channels=3, mean=mean, std=std, size=size, resampler="affine"
    ),
  )
