"""A prepared split as memory-mapped ``.npy`` files, so that a training patch reads its part.

An ``array_record`` example is one encoded record: reading any field of it decodes all of
it, so each 96x96x96 patch of a 512x512x300 CT volume decoded the whole volume. Datasets
kept at native resolution (the ones trained on patches) therefore also keep each split's
examples as plain arrays, as nnU-Net does with its preprocessed ``.npy`` files:

  ``<prepared dir>/arrays/<split>/<index:06d>.image.npy``  the image, as stored
  ``<prepared dir>/arrays/<split>/<index:06d>.mask.npy``   the raw mask
  ``<prepared dir>/arrays/<split>/<index:06d>.meta.npz``   the other fields (file name,
  geometry, the foreground locations)
  ``<prepared dir>/arrays/<split>/count.json``            written last: the split is complete

:class:`ArraySource` opens an image and its mask with ``mmap_mode="r"``: nothing is read
until the pipeline slices the patch's bounding box
(:func:`regionloss_jax.data.augment.warp_patch`). The files are written once per split
from the TFDS source, in a temporary folder renamed into place, so that an interrupted or
concurrent export never leaves a partial split.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid

import numpy as np

ARRAYS_DIR = "arrays"
_COUNT_FILE = "count.json"
_LAZY = {"image": "image", "segmentation_mask": "mask"}


def _stem(directory, index: int) -> str:
  return os.path.join(directory, f"{index:06d}")


def export(source, directory) -> pathlib.Path:
  """Writes every example of ``source`` under ``directory`` unless it is already there.

  Returns:
    ``directory``, complete.

  Raises:
    OSError: when the files cannot be written; nothing is left half-written.
  """
  directory = pathlib.Path(directory)
  if (directory / _COUNT_FILE).exists():
    return directory
  temporary = directory.with_name(f"{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
  temporary.mkdir(parents=True)
  try:
    for index in range(len(source)):
      example = source[index]
      stem = _stem(temporary, index)
      for key, suffix in _LAZY.items():
        np.save(f"{stem}.{suffix}.npy", np.asarray(example[key]), allow_pickle=False)
      small = {key: np.asarray(value) for key, value in example.items() if key not in _LAZY}
      np.savez(f"{stem}.meta.npz", **small)
    (temporary / _COUNT_FILE).write_text(json.dumps({"examples": len(source)}))
    try:
      os.rename(temporary, directory)
    except OSError:
      if not (directory / _COUNT_FILE).exists():  # not a concurrent export that finished first
        raise
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  return directory


def _field(value: np.ndarray):
  """A stored field as the TFDS source gives it: text as ``bytes``, arrays as arrays."""
  if value.ndim == 0 and value.dtype.kind in "SU":
    return value.item()
  return value


class ArraySource:
  """The examples written by :func:`export`, random-access and picklable (grain's threads
  and processes share it): ``image`` and ``segmentation_mask`` are read-only ``np.memmap``
  arrays, the other fields as the TFDS source gives them.
  """

  def __init__(self, directory):
    self.directory = str(directory)
    count = pathlib.Path(self.directory) / _COUNT_FILE
    try:
      self._length = int(json.loads(count.read_text())["examples"])
    except (OSError, ValueError, KeyError) as error:
      raise FileNotFoundError(f"{count}: not a complete exported split ({error})") from error

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f"example {index} of {self._length} in {self.directory}")
    stem = _stem(self.directory, index)
    with np.load(f"{stem}.meta.npz", allow_pickle=False) as meta:
      example = {key: _field(meta[key]) for key in meta.files}
    for key, suffix in _LAZY.items():
      example[key] = np.load(f"{stem}.{suffix}.npy", mmap_mode="r", allow_pickle=False)
    return example

  def __repr__(self) -> str:
    return f"ArraySource({self._length} examples in {self.directory})"


def split_source(builder, split: str, *, memory_mapped: bool):
  """The source of ``split`` of a prepared TFDS ``builder``: an :class:`ArraySource`
  (exported on first use) when ``memory_mapped`` and ``split`` is a whole split, else the
  TFDS data source (resized datasets read every pixel of an example anyway)."""
  tfds_source = builder.as_data_source(split)
  if not memory_mapped or split not in builder.info.splits:  # a slice is no split name
    return tfds_source
  directory = pathlib.Path(builder.data_dir) / ARRAYS_DIR / split
  return ArraySource(export(tfds_source, directory))
