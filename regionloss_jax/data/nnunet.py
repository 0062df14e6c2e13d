"""nnU-Net's raw dataset layout (and the Medical Segmentation Decathlon's), prepared once into
the cache as a TFDS dataset.

Layout (``root`` is e.g. ``Dataset005_Prostate/``)::

  dataset.json
  imagesTr/<case>_0000<file_ending>, <case>_0001<file_ending>, ...  one file per channel
  labelsTr/<case><file_ending>                                       class ids
  imagesTs/, labelsTs/                                               optional

``dataset.json`` (nnU-Net v2) names the channels (``channel_names``: ``{"0": "T2", "1":
"ADC"}``), the labels (``labels``: ``{"background": 0, "PZ": 1, ...}``, consecutive from 0;
an ``ignore`` label, the highest, marks pixels that count nowhere and becomes
``IGNORE_INDEX``), ``numTraining`` and ``file_ending`` (``.nii.gz`` or ``.nii``: 3-D;
``.png``, ``.bmp``, ``.tif``, ``.tiff``: 2-D). The Decathlon's own ``dataset.json``
(``modality`` for the channels, ``labels`` as ``{"0": "background", ...}``, no
``file_ending``: ``.nii.gz``) is read too, its multi-modal images being single 4-D NIfTI
files ``imagesTr/<case>.nii.gz`` with the channels on the fourth axis.

Splits: ``train`` is ``imagesTr`` + ``labelsTr``. With ``labelsTs``, ``imagesTs`` +
``labelsTs`` is ``test`` and ``validation`` is carved from ``train``; without it both are
carved (:func:`regionloss_jax.data.pairing.carve_splits`). Unlabelled ``imagesTs`` are for
``python -m train.predict``.

Images keep their own size (native resolution) or are fitted to ``size``; each channel is
scaled on its own as :mod:`regionloss_jax.data.preprocess` says. Prepared examples are those
of :class:`regionloss_jax.data.volumes.SegmentationVolumes` (``image`` float32 ``(D, H, W,
C)``) or :class:`regionloss_jax.data.folder.SegmentationFolder` (``image`` uint8 / uint16
``(H, W, C)``), with ``file_name`` ``<case><file_ending>`` (what predictions are named by).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from regionloss_jax.data import arrays, cache, folder, pairing, preprocess, volumes
from regionloss_jax.data.files import Volume, read_image, read_mask, read_volume
from regionloss_jax.data.source import IGNORE_INDEX, DataError, SegmentationData

DATASET_JSON = "dataset.json"
FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
# file_ending -> spatial dims: what this package reads (nnU-Net's NibabelIO and
# NaturalImage2DIO endings; .nrrd / .mha need SimpleITK).
ENDINGS = {".nii.gz": 3, ".nii": 3, ".png": 2, ".bmp": 2, ".tif": 2, ".tiff": 2}
IGNORE_LABEL = "ignore"
# Within a case, spacings and affines agreeing to this relative tolerance are one grid.
GEOMETRY_RTOL = 1e-3
MAX_CLASSES = 255  # uint8 class ids, 255 being the ignore index
MEAN, STD = 0.5, 0.25
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class Case(NamedTuple):
  """One case: its name, its image files (in channel order) and its label file."""

  name: str
  images: tuple[pathlib.Path, ...]
  label: pathlib.Path


@dataclasses.dataclass(frozen=True)
class DatasetJson:
  """What ``dataset.json`` says.

  Attributes:
    channel_names: one name per input channel, in channel-index order.
    class_names: one name per class id (the ignore label left out).
    lookup: raw label value -> class id (``IGNORE_INDEX`` for the ignore label).
    num_training: ``numTraining``.
    file_ending: every file's ending (``.nii.gz`` for the Decathlon's).
    decathlon: the Decathlon's (or nnU-Net v1's) format: ``modality``, ids -> names.
  """

  channel_names: tuple[str, ...]
  class_names: tuple[str, ...]
  lookup: dict[int, int]
  num_training: int
  file_ending: str
  decathlon: bool = False

  @property
  def spatial_dims(self) -> int:
    return ENDINGS[self.file_ending]


# ---------------------------------------------------------------------------------------
# dataset.json


def read_dataset_json(root) -> DatasetJson:
  """``root/dataset.json`` checked.

  Raises:
    DataError: naming every problem of the file (missing, not JSON, missing or malformed
      keys, labels not consecutive from 0, region-based labels, an unsupported ending).
  """
  path = pathlib.Path(root).expanduser() / DATASET_JSON
  if not path.is_file():
    raise DataError([f"{path}: missing (nnU-Net's raw layout: dataset.json, imagesTr/, labelsTr/)"])
  try:
    meta = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise DataError([f"{path}: not valid JSON ({error})"]) from None
  if not isinstance(meta, dict):
    raise DataError([f"{path}: not a JSON object"])
  problems = []
  channels = _channel_names(meta, path, problems)
  labels = _labels(meta, path, problems)
  ending = _file_ending(meta, path, problems)
  count = meta.get("numTraining")
  if count is None:
    problems.append(f"{path}: missing key 'numTraining'")
  elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
    problems.append(f"{path}: numTraining={count!r} is not a count of cases")
  if problems:
    raise DataError(problems)
  class_names, lookup = labels
  return DatasetJson(
    channels, class_names, lookup, count, ending, decathlon="channel_names" not in meta
  )


def _channel_names(meta: dict, path, problems: list) -> tuple[str, ...]:
  key = "channel_names" if "channel_names" in meta or "modality" not in meta else "modality"
  names = meta.get(key)
  if names is None:
    problems.append(f'{path}: missing key \'channel_names\' (e.g. {{"0": "T2", "1": "ADC"}})')
    return ()
  indices = _consecutive_keys(names)
  if indices is None:
    problems.append(
      f"{path}: {key} must map channel indices '0', '1', ... (consecutive from 0) to "
      f"names, got {names!r}"
    )
    return ()
  return tuple(str(names[str(i)]) for i in indices)


def _consecutive_keys(mapping) -> list[int] | None:
  """``[0, ..., n-1]`` when ``mapping`` is a non-empty dict keyed ``'0'`` .. ``'n-1'``."""
  if not isinstance(mapping, dict) or not mapping:
    return None
  if not all(isinstance(k, str) and k.isdigit() for k in mapping):
    return None
  indices = sorted(int(k) for k in mapping)
  if indices != list(range(len(mapping))) or set(mapping) != {str(i) for i in indices}:
    return None
  return indices


def _labels(meta: dict, path, problems: list):
  """``(class_names, lookup)`` from either format of ``labels``; ``((), {})`` on problems."""
  labels = meta.get("labels")
  if labels is None:
    problems.append(f'{path}: missing key \'labels\' (e.g. {{"background": 0, "tumour": 1}})')
    return (), {}
  regions = isinstance(labels, dict) and any(isinstance(v, (list, tuple)) for v in labels.values())
  if regions or "regions_class_order" in meta:
    problems.append(
      f"{path}: region-based labels (lists of values, regions_class_order) are not "
      "supported; give each label one integer value"
    )
    return (), {}
  if isinstance(labels, dict) and labels and all(isinstance(v, str) for v in labels.values()):
    ids = _consecutive_keys(labels)  # the Decathlon's {"0": "background", ...}
    if ids is None:
      problems.append(f"{path}: labels {labels!r} must be consecutive integer ids from 0 to names")
      return (), {}
    values = {labels[str(i)]: i for i in ids}
    if len(values) != len(ids):
      problems.append(f"{path}: labels {labels!r} repeat a name")
      return (), {}
  elif isinstance(labels, dict) and all(
    isinstance(v, int) and not isinstance(v, bool) for v in labels.values()
  ):
    values = dict(labels)
  else:
    problems.append(
      f'{path}: labels must map names to integer values ({{"background": 0, ...}}), got {labels!r}'
    )
    return (), {}
  return _label_lookup(values, path, problems)


def _label_lookup(values: dict[str, int], path, problems: list):
  """Names -> raw values as ``(class_names, lookup)``; the ignore label goes to 255."""
  ordered = sorted(values.items(), key=lambda item: item[1])
  if sorted(values.values()) != list(range(len(values))):
    problems.append(
      f"{path}: label values {sorted(values.values())} must be consecutive from 0 "
      f"(labels: {values})"
    )
    return (), {}
  if IGNORE_LABEL in values and values[IGNORE_LABEL] != ordered[-1][1]:
    problems.append(
      f"{path}: the 'ignore' label is {values[IGNORE_LABEL]}; it must have the highest "
      f"value ({ordered[-1][1]})"
    )
    return (), {}
  names = tuple(name for name, _ in ordered if name != IGNORE_LABEL)
  if not 2 <= len(names) <= MAX_CLASSES:
    problems.append(
      f"{path}: {len(names)} label(s) {list(names)}; background plus 1 to "
      f"{MAX_CLASSES - 1} classes are needed"
    )
    return (), {}
  lookup = {value: (IGNORE_INDEX if name == IGNORE_LABEL else value) for name, value in ordered}
  return names, lookup


def _file_ending(meta: dict, path, problems: list) -> str:
  ending = meta.get("file_ending")
  if ending is None:
    if "channel_names" not in meta and "modality" in meta:
      return ".nii.gz"  # the Decathlon's files
    problems.append(f'{path}: missing key \'file_ending\' (e.g. ".nii.gz" or ".png")')
    return ""
  if ending not in ENDINGS:
    problems.append(
      f"{path}: file_ending {ending!r} is not supported (supported: {', '.join(ENDINGS)}); "
      "convert the images and labels to NIfTI (.nii.gz), or to PNG for 2-D data"
    )
    return ""
  return ending


# ---------------------------------------------------------------------------------------
# Finding the cases


def listed_files(folder_path: pathlib.Path) -> list[pathlib.Path]:
  """The non-hidden files of a folder, sorted (the Decathlon's archives hold ``._*`` files)."""
  if not folder_path.is_dir():
    return []
  return sorted(p for p in folder_path.iterdir() if p.is_file() and not p.name.startswith("."))


def channel_of(path: pathlib.Path, file_ending: str) -> tuple[str, int] | None:
  """``(case, channel)`` of ``<case>_XXXX<file_ending>``, else ``None``."""
  if not path.name.endswith(file_ending):
    return None
  match = _CHANNEL_SUFFIX.match(path.name[: -len(file_ending)])
  return (match["case"], int(match["channel"])) if match else None


def group_channel_files(
  paths: Iterable[pathlib.Path],
  *,
  file_ending: str,
  channel_files: int,
  channel_names: Sequence[str] = (),
) -> tuple[dict[str, tuple[pathlib.Path, ...]], list[str]]:
  """Group ``<case>_XXXX<file_ending>`` files into cases.

  Args:
    paths: files that all end with ``file_ending``.
    file_ending: the dataset's.
    channel_files: files per case, ``_0000`` to ``_{channel_files-1:04d}``.
    channel_names: for messages (dataset.json's).

  Returns:
    ``(cases, problems)``: ``{case: channel files in order}`` of the complete cases, and a
    message for each file not so named, of a channel index beyond ``channel_files``, or
    case missing a channel (naming the file expected).
  """
  found, problems = {}, []
  for path in paths:
    parsed = channel_of(path, file_ending)
    if parsed is None:
      problems.append(
        f"{path}: not named <case>_XXXX{file_ending} (XXXX: the four-digit channel index)"
      )
      continue
    case, channel = parsed
    if channel >= channel_files:
      known = ", ".join(f"{c:04d}" for c in range(channel_files))
      problems.append(
        f"{path}: channel {channel:04d} is not one of the dataset's channel files ({known}; "
        f"dataset.json's channel_names: {list(channel_names) or channel_files})"
      )
      continue
    found.setdefault(case, {})[channel] = path
  cases = {}
  for case, channels in sorted(found.items()):
    missing = [c for c in range(channel_files) if c not in channels]
    for c in missing:
      name = f" ({channel_names[c]})" if c < len(channel_names) else ""
      expected = next(iter(channels.values())).parent / f"{case}_{c:04d}{file_ending}"
      problems.append(f"case {case!r}: missing channel {c:04d}{name}: expected {expected}")
    if not missing:
      cases[case] = tuple(channels[c] for c in range(channel_files))
  return cases, problems


def channel_file_count(meta: DatasetJson, image_paths: Sequence[pathlib.Path]) -> int:
  """Files per case: one per channel, except RGB natural images (one ``_0000`` file holding
  dataset.json's 3 channels, as nnU-Net allows) and the Decathlon's 4-D images (0: one
  file without a channel suffix holds them all)."""
  indices = [channel_of(p, meta.file_ending) for p in image_paths]
  if meta.decathlon and image_paths and not all(indices):
    return 0
  one_file = all(i is None or i[1] == 0 for i in indices)
  if meta.spatial_dims == 2 and len(meta.channel_names) == 3 and one_file:
    return 1
  return len(meta.channel_names)


def _ending_problems(paths, ending: str, what: str) -> tuple[list, list[str]]:
  kept, problems = [], []
  for path in paths:
    if path.name.endswith(ending):
      kept.append(path)
    else:
      problems.append(
        f"{path}: {what} with another ending than dataset.json's file_ending {ending!r}"
      )
  return kept, problems


def find_cases(root: pathlib.Path, meta: DatasetJson, channel_files: int):
  """The labelled cases of ``imagesTr``/``labelsTr`` (``train``) and, when ``labelsTs``
  exists, of ``imagesTs``/``labelsTs`` (``test``).

  Returns:
    ``(pairs, problems)``: ``{split: [Case, ...]}`` sorted by name, and a message for each
    file of another ending, misnamed, of a missing channel, or without its partner, and for
    ``numTraining`` disagreeing with the labelled cases.
  """
  problems = []
  if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
    for name in ("imagesTr", "labelsTr"):
      if not (root / name).is_dir():
        problems.append(f"{root / name}: missing folder")
    return {}, problems
  pairs = {"train": _split_cases(root, "imagesTr", "labelsTr", meta, channel_files, problems)}
  labelled = sum(p.name.endswith(meta.file_ending) for p in listed_files(root / "labelsTr"))
  if labelled != meta.num_training:
    problems.append(
      f"{root / DATASET_JSON}: numTraining is {meta.num_training} but labelsTr holds "
      f"{labelled} label file(s)"
    )
  if (root / "labelsTs").is_dir():
    if not (root / "imagesTs").is_dir():
      problems.append(f"{root / 'imagesTs'}: missing folder (labelsTs is there)")
    else:
      pairs["test"] = _split_cases(root, "imagesTs", "labelsTs", meta, channel_files, problems)
      if not pairs["test"]:
        problems.append(f"{root / 'labelsTs'}: no labelled test cases (remove it to carve test)")
  if not pairs["train"] and not problems:
    problems.append(f"{root / 'imagesTr'}: no labelled cases")
  return pairs, problems


def _split_cases(root, images_dir, labels_dir, meta, channel_files, problems) -> list[Case]:
  ending = meta.file_ending
  image_paths, bad = _ending_problems(listed_files(root / images_dir), ending, "image")
  problems += bad
  label_paths, bad = _ending_problems(listed_files(root / labels_dir), ending, "label")
  problems += bad
  if channel_files:
    images, bad = group_channel_files(
      image_paths, file_ending=ending, channel_files=channel_files, channel_names=meta.channel_names
    )
    problems += bad
  else:
    images = {p.name[: -len(ending)]: (p,) for p in image_paths}
  labels = {p.name[: -len(ending)]: p for p in label_paths}
  for case in sorted(labels.keys() - images.keys()):
    if channel_files and any((channel_of(p, ending) or ("",))[0] == case for p in image_paths):
      continue  # a case missing a channel: already named
    expected = f"{case}_0000{ending}" if channel_files else f"{case}{ending}"
    problems.append(
      f"{labels[case]}: label without images (expected {root / images_dir / expected})"
    )
  for case in sorted(images.keys() - labels.keys()):
    problems.append(
      f"{images[case][0]}: images of case {case!r} without a label (expected "
      f"{root / labels_dir / (case + ending)})"
    )
  return [Case(c, images[c], labels[c]) for c in sorted(images.keys() & labels.keys())]


# ---------------------------------------------------------------------------------------
# Reading and checking the cases


def read_channels(paths: Sequence[pathlib.Path], spatial_dims: int):
  """A case's image files stacked in order: ``(array (*spatial, C), spacing, affine,
  header)``, the geometry of the first file (2-D: ``None``)."""
  if spatial_dims == 2:
    return np.concatenate([read_image(p) for p in paths], axis=-1), None, None, None
  read = [read_volume(p, channels=True) for p in paths]
  first = read[0]
  return np.concatenate([v.array for v in read], axis=-1), first.spacing, first.affine, first.header


def check_cases(pairs: dict, meta: DatasetJson, *, root, problems=(), native: bool) -> None:
  """Read every case; raise one :class:`DataError` naming every bad file, after
  ``problems`` already found. Warns for splits whose labels are all background."""
  problems = list(problems)
  foreground = {}
  for split, cases in pairs.items():
    foreground[split] = False
    for case in cases:
      found, has_foreground = _check_case(case, meta, native=native)
      problems += found
      foreground[split] |= has_foreground
  if problems:
    raise DataError(problems, root=str(root))
  pairing.warn_background_only(foreground, root)


def _check_case(case: Case, meta: DatasetJson, *, native: bool) -> tuple[list[str], bool]:
  """``(problems, has foreground)`` of one case: its files readable, finite, on one grid,
  with dataset.json's channels and label values."""
  problems, grids, channels = [], [], 0
  for path in case.images:
    read = _read(path, "image", meta.spatial_dims, problems)
    if read is None:
      continue
    array, grid = read
    channels += array.shape[-1]
    grids.append((path, grid))
    nonfinite = pairing.nonfinite_problem(path, array, "image")
    if nonfinite:
      problems.append(nonfinite)
  has_foreground = False
  read = _read(case.label, "label", meta.spatial_dims, problems)
  if read is not None:
    labels, grid = read
    grids.append((case.label, grid))
    has_foreground = _label_problems(case.label, labels, meta, native, problems)
  if len(grids) == len(case.images) + 1 and channels != len(meta.channel_names):
    problems.append(
      f"case {case.name!r}: its image file(s) {[p.name for p in case.images]} hold "
      f"{channels} channel(s) but dataset.json's channel_names list "
      f"{len(meta.channel_names)}: {list(meta.channel_names)}"
    )
  problems += _grid_problems(case.name, grids)
  return problems, has_foreground


class _Grid(NamedTuple):
  shape: tuple[int, ...]
  spacing: tuple[float, ...] | None
  affine: np.ndarray | None


def _read(path: pathlib.Path, what: str, spatial_dims: int, problems: list):
  """``(array, grid)`` of one file (images ``(*spatial, C)``, labels ``(*spatial)``), or
  ``None`` after adding its problem."""
  empty = pairing.empty_file_problem(path, what)
  if empty:
    problems.append(empty)
    return None
  try:
    if spatial_dims == 2:
      array = read_image(path) if what == "image" else read_mask(path)
      return array, _Grid(array.shape[:2], None, None)
    volume = read_volume(path, channels=what == "image")
  except Exception as e:  # noqa: BLE001  (nibabel and Pillow raise many types)
    problems.append(f"{path}: unreadable or corrupt {what} ({type(e).__name__}: {e})")
    return None
  return volume.array, _Grid(volume.array.shape[:3], volume.spacing, volume.affine)


def _label_problems(path, labels: np.ndarray, meta: DatasetJson, native: bool, problems) -> bool:
  """Adds the label file's problems; returns whether it holds a foreground class."""
  if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
    problems.append(f"{path}: label file holds non-integer values")
    return False
  small = pairing.too_small_problem(path, labels.shape) if native else None
  if small:
    problems.append(small)
  values = np.unique(labels).astype(np.int64).tolist()
  bad = sorted(set(values) - meta.lookup.keys())
  if bad:
    problems.append(
      f"{path}: label values not in dataset.json's labels: {bad} (found {values}; "
      f"dataset.json declares {sorted(meta.lookup)})"
    )
    return False
  return any(meta.lookup[v] not in (0, IGNORE_INDEX) for v in values)


def _grid_problems(case: str, grids: list) -> list[str]:
  """Every file of a case on the first one's grid: shape, voxel spacing, affine."""
  if not grids:
    return []
  (first, ref), problems = grids[0], []
  for path, grid in grids[1:]:
    if grid.shape != ref.shape:
      problems.append(
        f"{path} has shape {grid.shape} but {first.name} of the same case {case!r} has {ref.shape}"
      )
    elif ref.spacing is not None and not np.allclose(
      grid.spacing, ref.spacing, rtol=GEOMETRY_RTOL, atol=0
    ):
      problems.append(
        f"mixed spacings in case {case!r}: {first} has spacing {_mm(ref.spacing)} but {path} "
        f"has {_mm(grid.spacing)} ((D, H, W) mm); a case's channels and label share one grid"
      )
    elif ref.affine is not None and not np.allclose(
      grid.affine, ref.affine, rtol=GEOMETRY_RTOL, atol=GEOMETRY_RTOL * max(ref.spacing)
    ):
      problems.append(
        f"{path}: its affine (orientation or origin) differs from that of {first} in case "
        f"{case!r}:\n{np.round(grid.affine, 4).tolist()} vs {np.round(ref.affine, 4).tolist()}"
      )
  return problems


def _mm(spacing) -> str:
  return "(" + ", ".join(f"{s:g}" for s in spacing) + ")"


# ---------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass(kw_only=True)
class NnunetConfig(volumes.VolumeConfig):
  """What to write: the checked cases per split, how they are stored, the label lookup, and
  the file ending that names each case's file."""

  file_ending: str = ""


def _case_examples(config: NnunetConfig, cases: Sequence[Case]):
  prep = config.preprocessing
  for case in cases:
    array, spacing, affine, header = read_channels(case.images, prep.spatial_dims)
    if prep.spatial_dims == 2:
      labels = pairing.apply_lookup(read_mask(case.label), config.lookup)
    else:
      raw = np.round(read_volume(case.label).array).astype(np.int64)
      labels = pairing.apply_lookup(raw, config.lookup)
    name, count = case.name + config.file_ending, len(config.class_names)
    if prep.spatial_dims == 2:
      yield case.name, folder.image_example(prep, array, labels, file_name=name, num_classes=count)
    else:
      volume = Volume(array, affine, spacing, header)
      yield (
        case.name,
        volumes.volume_example(prep, volume, labels, file_name=name, num_classes=count),
      )


class NnunetVolumes(volumes.SegmentationVolumes, skip_registration=True):
  """TFDS builder writing a checked 3-D nnU-Net dataset (the volumes' features, C channels)."""

  name = "nnunet_volumes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def _generate_examples(self, pairs):
    yield from _case_examples(self.builder_config, pairs)


class NnunetImages(folder.SegmentationFolder, skip_registration=True):
  """TFDS builder writing a checked 2-D nnU-Net dataset (the folder's features)."""

  name = "nnunet_images"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def _generate_examples(self, pairs):
    yield from _case_examples(self.builder_config, pairs)


# ---------------------------------------------------------------------------------------
# Loading


def _checked_classes(meta: DatasetJson, num_classes, class_names) -> None:
  if num_classes is not None and num_classes != len(meta.class_names):
    raise ValueError(
      f"num_classes={num_classes} but dataset.json declares {len(meta.class_names)} classes "
      f"{list(meta.class_names)}"
    )
  if class_names is not None and tuple(class_names) != meta.class_names:
    raise ValueError(
      f"class_names={list(class_names)} but dataset.json declares {list(meta.class_names)}"
    )


def _preprocessing(meta, image_paths, channel_files, *, size, mode, spacing, intensity_range):
  dims, count = meta.spatial_dims, len(meta.channel_names)
  if size is not None and len(size) != dims:
    raise ValueError(
      f"size={size} needs {dims} entries: dataset.json's {meta.file_ending} is {dims}-D"
    )
  if dims == 2 and (spacing or intensity_range):
    raise ValueError(f"spacing and intensity_range are for 3-D data, not {meta.file_ending}")
  if mode not in preprocess.FIT_MODES:
    raise ValueError(f"mode must be one of {preprocess.FIT_MODES}, got {mode!r}")
  return preprocess.Preprocessing(
    spatial_dims=dims,
    channels=count,
    mean=(MEAN,) * count,
    std=(STD,) * count,
    bit_depth=folder.image_format(image_paths)[1] if dims == 2 else 8,
    size=size,
    fit_mode=mode,
    spacing=spacing if dims == 3 else None,
    intensity_range=intensity_range if dims == 3 else None,
    channel_files=channel_files,
    file_ending=meta.file_ending if channel_files else "",
  )


def load_nnunet(
  root,
  *,
  split: str = "train",
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  size: tuple[int, ...] | None = None,
  mode: str = "resize",
  spacing: tuple[float, float, float] | None = None,
  intensity_range: tuple[float, float] | None = None,
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  split_seed: int = 0,
  cache_dir=None,
) -> SegmentationData:
  """Check and prepare (once per dataset content and options) an nnU-Net raw dataset; open a
  split.

  Args:
    root: the dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ...).
    split: ``train``, ``validation`` (or ``val``), ``test``, or a TFDS slice of one.
    num_classes, class_names: optional; dataset.json's labels give them, and these must
      agree (``ValueError`` naming both otherwise).
    size: the ``(H, W)`` / ``(D, H, W)`` every case is fitted to; ``None``: native.
    mode, spacing, intensity_range: 3-D, as in :func:`regionloss_jax.data.load_volumes`
      (the window applies to every channel).
    val_fraction, test_fraction, split_seed: carving, as in
      :func:`regionloss_jax.data.load_folder` (no ``test`` carved when ``labelsTs`` exists).
    cache_dir: cache root; files go in ``<cache_dir>/nnunet/<name>-<key>``.

  Returns:
    A :class:`SegmentationData` of ``(*spatial, C)`` images, ``C`` dataset.json's channels.

  Raises:
    DataError: naming every problem of dataset.json, and then every misnamed, unpaired,
      empty, unreadable, misaligned or out-of-range file, in one report; nothing is
      written to the cache then.
  """
  root = pathlib.Path(root).expanduser().resolve()
  meta = read_dataset_json(root)
  _checked_classes(meta, num_classes, class_names)
  size = None if not size else tuple(int(s) for s in size)
  spacing = None if not spacing else tuple(float(s) for s in spacing)
  tr_images = listed_files(root / "imagesTr")
  channel_files = channel_file_count(meta, tr_images)
  prep = _preprocessing(
    meta,
    [p for p in tr_images if p.name.endswith(meta.file_ending)],
    channel_files,
    size=size,
    mode=mode,
    spacing=spacing,
    intensity_range=None if intensity_range is None else tuple(intensity_range),
  )
  listed = [root / DATASET_JSON] + [p for f in FOLDERS for p in listed_files(root / f)]
  options = dict(
    preprocessing=prep.to_dict(),
    lookup=sorted(meta.lookup.items()),
    class_names=meta.class_names,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    split_seed=split_seed,
    # pairing.prepare_cached fingerprints the folder layout's split folders; these are
    # nnU-Net's.
    files=cache.folder_fingerprint(listed, root),
    version=str(NnunetVolumes.VERSION if meta.spatial_dims == 3 else NnunetImages.VERSION),
  )

  def check():
    pairs, problems = find_cases(root, meta, channel_files)
    # Every found case is read even when some files are misnamed: one report names them all.
    check_cases(pairs, meta, root=root, problems=problems, native=size is None)
    return pairing.carve_splits(
      pairs, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )

  def make_builder(data_dir, pairs):
    config = NnunetConfig(
      # The config name keys the default cross-validation split file (train.folds).
      name=re.sub(r"\W", "_", root.name) or "default",
      pairs=pairs or {},
      preprocessing=prep,
      lookup=meta.lookup,
      class_names=meta.class_names,
      file_ending=meta.file_ending,
    )
    builder = NnunetVolumes if meta.spatial_dims == 3 else NnunetImages
    return builder(config=config, data_dir=data_dir)

  builder = pairing.prepare_cached(
    kind="nnunet",
    root=root,
    options=options,
    cache_dir=cache_dir,
    check=check,
    make_builder=make_builder,
  )
  return SegmentationData(
    source=arrays.split_source(builder, pairing.split_name(split), memory_mapped=size is None),
    class_names=meta.class_names,
    spatial_shape=size,
    mean=prep.mean,
    std=prep.std,
    info=builder.info,
    preprocessing=prep,
  )


# ---------------------------------------------------------------------------------------
# New inputs of a trained run (train.predict)


def input_cases(paths: Sequence[pathlib.Path], prep: preprocess.Preprocessing):
  """The cases among ``paths`` (files of a folder, or one channel file) of a run whose
  inputs are ``prep.channel_files`` files per case.

  Returns:
    ``(inputs, problems)``: each complete case's ``_0000`` file, sorted (its siblings are
    found by :func:`case_files`), and a message for each other file or incomplete case.
  """
  paths = list(paths)
  ending = prep.file_ending
  problems = [
    f"{p}: not a {ending} file of this run (its inputs are <case>_XXXX{ending})"
    for p in paths
    if not p.name.endswith(ending)
  ]
  kept = [p for p in paths if p.name.endswith(ending)]
  if len(kept) == 1 and channel_of(kept[0], ending):  # one file given: its case's siblings
    case, _ = channel_of(kept[0], ending)
    kept = [kept[0].parent / f"{case}_{c:04d}{ending}" for c in range(prep.channel_files)]
    missing = [p for p in kept if not p.is_file()]
    if missing:
      return [], problems + [
        f"case {case!r}: missing channel file {p} (the run takes {prep.channel_files} "
        "files per case)"
        for p in missing
      ]
  cases, bad = group_channel_files(kept, file_ending=ending, channel_files=prep.channel_files)
  return [files[0] for _, files in sorted(cases.items())], problems + bad


def case_files(path: pathlib.Path, prep: preprocess.Preprocessing) -> tuple[pathlib.Path, ...]:
  """The channel files of the case of channel file ``path``, in order.

  Raises ``FileNotFoundError`` naming a missing one.
  """
  case, _ = channel_of(path, prep.file_ending) or (None, None)
  if case is None:
    raise ValueError(f"not named <case>_XXXX{prep.file_ending}")
  found = tuple(
    path.parent / f"{case}_{c:04d}{prep.file_ending}" for c in range(prep.channel_files)
  )
  for p in found:
    if not p.is_file():
      raise FileNotFoundError(f"case {case!r}: missing channel file {p}")
  return found


def case_name(path: pathlib.Path, prep: preprocess.Preprocessing) -> str:
  """``<case><file_ending>`` for a channel file of such a run (what its mask is named by),
  else the file's own name."""
  parsed = channel_of(path, prep.file_ending) if prep.channel_files else None
  return parsed[0] + prep.file_ending if parsed else path.name
