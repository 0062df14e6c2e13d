"""Colin27 brain structures: a real segmentation dataset of very unequal region sizes, offline.

Debian's ``mricron-data`` package ships the Colin27 T1 template (``ch2bet.nii.gz``, skull
stripped) and the AAL atlas on the same 181x217x181 1-mm grid (``aal.nii.gz``, 116 labels
named in ``aal.nii.txt``), in ``/usr/share/mricron/templates``. :func:`build` groups the AAL
labels into :data:`STRUCTURES` (left and right merged) and writes

* ``<out>/2d/{train,val,test}/{images,masks}/colin27_<axis><index>.png``: one grey-scale
  slice per file, the folder dataset's layout (:mod:`regionloss_jax.data.folder`);
* ``<out>/3d/{train,val,test}/{images,masks}/colin27_<axis><first>-<last>.nii.gz``: each run
  of consecutive slices of one split as a sub-volume whose affine places it in the template
  (the volumes dataset's layout);
* ``<out>/dataset.json``: classes, the split of every slice, pixels per class and split.

Slices are cut along one axis (sagittal by default: every deep structure then appears in
both hemispheres, so each split sees it) and assigned to splits by slabs of ``slab``
consecutive slices following ``pattern`` (by default 4-slice slabs, train x3, validation,
train x3, test, which keeps about 70/15/15% of the slices); training slices within ``gap``
slices of a validation or test slice are left out (and validation slices within ``gap`` of
a test slice), so no evaluated slice has a training slice as its neighbour. The slabs'
offset is chosen from the labels alone (:func:`best_offset`) so that each split holds its
share of every structure. 3-D sub-volumes are as thick as these runs of slices: pass a
larger ``slab`` for 3-D patches. It is still one brain: results measure how well a loss
fits these structures, not how it generalises to new subjects.

Run it as ``python -m regionloss_jax.data.colin27 --templates=DIR --out=DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

TEMPLATE = "ch2bet.nii.gz"
ATLAS = "aal.nii.gz"
ATLAS_NAMES = "aal.nii.txt"
DEBIAN_TEMPLATES = "/usr/share/mricron/templates"

# Class ids in this order; cortex is every cerebral AAL label not named below.
STRUCTURES = (
  "background",
  "cortex",
  "cerebellum",
  "thalamus",
  "putamen",
  "caudate",
  "hippocampus",
  "pallidum",
  "amygdala",
)
_DEEP = {
  "Thalamus": "thalamus",
  "Putamen": "putamen",
  "Caudate": "caudate",
  "Hippocampus": "hippocampus",
  "Pallidum": "pallidum",
  "Amygdala": "amygdala",
}
_CEREBELLAR_PREFIXES = ("Cerebelum", "Cerebellum", "Vermis")  # AAL spells it "Cerebelum"

SPLITS = ("train", "validation", "test")
SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}
DROPPED = -1  # a guard slice, in no split
DEFAULT_PATTERN = ("train",) * 3 + ("validation",) + ("train",) * 3 + ("test",)
AXIS_NAMES = ("x", "y", "z")


def read_label_names(path) -> dict[int, str]:
  """AAL's label file: lines ``<id> <name> [<code>]`` -> ``{id: name}``.

  Raises:
    ValueError: naming the file and line that is not ``<positive id> <name> ...``.
  """
  names = {}
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) == 0:
      raise ValueError(
        f"{path}, line {number}: expected '<label id> <name> [<code>]', got {line!r}"
      )
    names[int(fields[0])] = fields[1]
  if not names:
    raise ValueError(f"{path}: no labels")
  return names


def structure_of(label_name: str) -> str:
  """The :data:`STRUCTURES` entry an AAL label belongs to (``Caudate_L`` -> ``caudate``)."""
  base = label_name.removesuffix("_L").removesuffix("_R")
  if base in _DEEP:
    return _DEEP[base]
  if base.startswith(_CEREBELLAR_PREFIXES):
    return "cerebellum"
  return "cortex"


def group_labels(atlas: np.ndarray, names: dict[int, str]) -> np.ndarray:
  """uint8 map of :data:`STRUCTURES` ids from an AAL label volume (0 stays background).

  Raises:
    ValueError: naming atlas values that the label file does not list.
  """
  atlas = np.asarray(atlas)
  if not np.issubdtype(atlas.dtype, np.integer):
    if not np.all(atlas == np.round(atlas)):
      raise ValueError(f"the atlas holds non-integer values (dtype {atlas.dtype})")
    atlas = atlas.astype(np.int64)
  values = np.unique(atlas)
  unknown = [int(v) for v in values if v != 0 and int(v) not in names]
  if unknown or values.min() < 0:
    raise ValueError(
      f"atlas values {unknown or [int(values.min())]} are not in the label "
      f"file ({len(names)} labels, ids {min(names)}-{max(names)})"
    )
  table = np.zeros(max(int(values.max()), max(names)) + 1, np.uint8)
  for label, name in names.items():
    table[label] = STRUCTURES.index(structure_of(name))
  return table[atlas]


def slice_splits(
  num_slices: int, *, slab: int, gap: int, pattern=DEFAULT_PATTERN, offset: int = 0
) -> np.ndarray:
  """Split index (into :data:`SPLITS`, or :data:`DROPPED`) of each of ``num_slices`` slices.

  Slice ``i`` lies in slab ``k = (i + offset) // slab``, which goes to ``pattern[k %
  len(pattern)]``. A training slice within ``gap`` slices of a validation or test slice,
  and a validation slice within ``gap`` of a test slice, is dropped.
  """
  if slab < 1 or gap < 0:
    raise ValueError(f"slab must be >= 1 and gap >= 0, got slab={slab}, gap={gap}")
  bad = [p for p in pattern if p not in SPLITS]
  if bad or not pattern:
    raise ValueError(f"pattern entries must be among {SPLITS}, got {tuple(pattern)}")
  codes = np.array(
    [SPLITS.index(pattern[((i + offset) // slab) % len(pattern)]) for i in range(num_slices)],
    np.int64,
  )
  out = codes.copy()
  for i in range(num_slices):
    near = codes[max(0, i - gap) : i + gap + 1]
    if near.max() > codes[i]:  # a later split (validation > train, test > validation) nearby
      out[i] = DROPPED
  return out


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
  """Slice ``index`` along ``axis`` as an image: the later remaining axis points up."""
  return np.flipud(np.take(volume, index, axis=axis).T)


def _scale_to_uint8(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
  top = np.percentile(image[brain], 99.5)
  return np.clip(np.round(image / top * 255), 0, 255).astype(np.uint8)


def best_offset(pixels: np.ndarray, *, slab: int, gap: int, pattern=DEFAULT_PATTERN) -> int:
  """The slab offset under which every split holds its share of every class.

  Args:
    pixels: ``(num_slices, num_classes)`` pixels of each class in each slice.

  Returns the offset maximising, over splits and classes, the smallest ratio of the class's
  share of pixels in the split to the split's share of slices (1 when a split is
  representative). It looks at where the labels are, never at any result; ties go to the
  smallest offset.
  """
  pixels = np.asarray(pixels, np.float64)
  totals = np.maximum(pixels.sum(0), 1)

  def balance(offset):
    splits = slice_splits(len(pixels), slab=slab, gap=gap, pattern=pattern, offset=offset)
    ratios = []
    for k in range(len(SPLITS)):
      kept = splits == k
      if kept.any():
        ratios.append((pixels[kept].sum(0) / totals).min() / (kept.sum() / len(pixels)))
      else:
        ratios.append(0.0)
    return min(ratios)

  return max(range(slab * len(pattern)), key=lambda o: (balance(o), -o))


def build(
  templates,
  out,
  *,
  axis: int = 0,
  slab: int = 4,
  gap: int = 2,
  pattern=DEFAULT_PATTERN,
  offset: int | None = None,
  dims=(2, 3),
) -> dict:
  """Write the 2-D and/or 3-D datasets under ``out``; returns ``dataset.json``'s content.

  Args:
    templates: folder holding ``ch2bet.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``.
    out: output folder; must not exist yet (it is written elsewhere, then renamed).
    axis: NIfTI axis the slices are cut along (0 sagittal, 1 coronal, 2 axial).
    slab, gap, pattern, offset: the split, see :func:`slice_splits`; ``offset=None``
      takes :func:`best_offset`.
    dims: which versions to write, 2 and/or 3.

  Raises:
    FileNotFoundError: naming the missing template files.
    FileExistsError: when ``out`` exists.
    ValueError: for grids that differ, labels the name file lacks, or an empty split.
  """
  import nibabel as nib  # noqa: PLC0415  (only the builder reads NIfTI)
  from PIL import Image  # noqa: PLC0415

  templates, out = pathlib.Path(templates), pathlib.Path(out)
  missing = [
    str(templates / f) for f in (TEMPLATE, ATLAS, ATLAS_NAMES) if not (templates / f).is_file()
  ]
  if missing:
    raise FileNotFoundError(
      f"missing {', '.join(missing)} (Debian: apt-get install "
      f"mricron-data puts them in {DEBIAN_TEMPLATES})"
    )
  if out.exists():
    raise FileExistsError(f"{out} exists; choose a new --out (nothing was written)")
  if axis not in (0, 1, 2) or not set(dims) <= {2, 3} or not dims:
    raise ValueError(
      f"axis must be 0, 1 or 2 and dims among (2, 3), got axis={axis}, dims={tuple(dims)}"
    )
  t1_file, atlas_file = nib.load(templates / TEMPLATE), nib.load(templates / ATLAS)
  t1 = np.asarray(t1_file.dataobj, np.float32)
  if t1.shape != atlas_file.shape or not np.allclose(t1_file.affine, atlas_file.affine):
    raise ValueError(
      f"{templates / TEMPLATE} ({t1.shape}) and {templates / ATLAS} "
      f"({atlas_file.shape}) are not on the same grid"
    )
  labels = group_labels(np.asarray(atlas_file.dataobj), read_label_names(templates / ATLAS_NAMES))
  brain = (t1 > 0) | (labels > 0)
  other = tuple(a for a in range(3) if a != axis)
  occupied = np.flatnonzero(brain.any(axis=other))
  first, last = int(occupied[0]), int(occupied[-1])
  if offset is None:
    per_slice = np.stack(
      [
        (np.moveaxis(labels, axis, 0)[first : last + 1] == k).sum((1, 2))
        for k in range(len(STRUCTURES))
      ],
      axis=1,
    )
    offset = best_offset(per_slice, slab=slab, gap=gap, pattern=pattern)
  splits = np.full(t1.shape[axis], DROPPED)
  splits[first : last + 1] = slice_splits(
    last - first + 1, slab=slab, gap=gap, pattern=pattern, offset=offset
  )
  image_u8 = _scale_to_uint8(t1, brain)

  pixels = {s: np.zeros(len(STRUCTURES), np.int64) for s in SPLITS}
  slices = {s: [] for s in SPLITS}
  for index in np.flatnonzero(splits >= 0):
    split = SPLITS[splits[index]]
    slices[split].append(int(index))
    pixels[split] += np.bincount(
      np.take(labels, index, axis=axis).ravel(), minlength=len(STRUCTURES)
    )
  empty = [s for s in SPLITS if not slices[s]]
  if empty:
    raise ValueError(
      f"no slices in {', '.join(empty)}: slab={slab} with pattern "
      f"{tuple(pattern)} is too coarse for {last - first + 1} slices"
    )
  name = AXIS_NAMES[axis]
  record = {
    "source": {"template": str(templates / TEMPLATE), "atlas": str(templates / ATLAS)},
    "class_names": list(STRUCTURES),
    "num_classes": len(STRUCTURES),
    "axis": name,
    "slab": slab,
    "gap": gap,
    "pattern": list(pattern),
    "offset": offset,
    "first_slice": first,
    "slices": slices,
    "pixels": {s: dict(zip(STRUCTURES, p.tolist(), strict=True)) for s, p in pixels.items()},
    "missing": {
      s: [c for c, n in zip(STRUCTURES, p, strict=True) if n == 0] for s, p in pixels.items()
    },
  }

  out.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    for split in SPLITS:
      for version in dims:
        for sub in ("images", "masks"):
          (staging / f"{version}d" / SPLIT_DIRS[split] / sub).mkdir(parents=True)
    if 2 in dims:
      for split in SPLITS:
        folder = staging / "2d" / SPLIT_DIRS[split]
        for index in slices[split]:
          stem = f"colin27_{name}{index:03d}"
          Image.fromarray(_slice(image_u8, axis, index), mode="L").save(
            folder / "images" / f"{stem}.png"
          )
          Image.fromarray(_slice(labels, axis, index), mode="L").save(
            folder / "masks" / f"{stem}.png"
          )
    if 3 in dims:
      for start, stop, code in _runs(splits):
        folder = staging / "3d" / SPLIT_DIRS[SPLITS[code]]
        stem = f"colin27_{name}{start:03d}-{stop - 1:03d}"
        shift = np.eye(4)
        shift[axis, 3] = start
        affine = t1_file.affine @ shift  # voxel (0, 0, 0) of the run is voxel `start`
        region = [slice(None)] * 3
        region[axis] = slice(start, stop)
        nib.save(
          nib.Nifti1Image(np.asarray(t1_file.dataobj)[tuple(region)], affine),
          folder / "images" / f"{stem}.nii.gz",
        )
        nib.save(
          nib.Nifti1Image(labels[tuple(region)], affine), folder / "masks" / f"{stem}.nii.gz"
        )
    (staging / "dataset.json").write_text(json.dumps(record, indent=1))
    os.replace(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return record


def _runs(splits: np.ndarray):
  """``(start, stop, split)`` of each maximal run of equal, non-dropped split codes."""
  start = 0
  for i in range(1, len(splits) + 1):
    if i == len(splits) or splits[i] != splits[start]:
      if splits[start] != DROPPED:
        yield start, i, int(splits[start])
      start = i


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m regionloss_jax.data.colin27",
    description="Colin27 brain structures from AAL as 2-D slice and 3-D slab datasets.",
  )
  parser.add_argument(
    "--templates",
    default=DEBIAN_TEMPLATES,
    help="folder with ch2bet.nii.gz, aal.nii.gz, aal.nii.txt",
  )
  parser.add_argument("--out", required=True, help="new output folder")
  parser.add_argument(
    "--axis",
    type=int,
    default=0,
    choices=(0, 1, 2),
    help="slice axis: 0 sagittal, 1 coronal, 2 axial",
  )
  parser.add_argument("--slab", type=int, default=4, help="slices per slab")
  parser.add_argument(
    "--gap", type=int, default=2, help="guard slices between training and evaluated slabs"
  )
  args = parser.parse_args(argv)
  try:
    record = build(args.templates, args.out, axis=args.axis, slab=args.slab, gap=args.gap)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  for split in SPLITS:
    print(
      f"{split:<11}{len(record['slices'][split]):>4} slices"
      + (f"; without {', '.join(record['missing'][split])}" if record["missing"][split] else "")
    )
  names = ",".join(record["class_names"])
  print(
    f"wrote {args.out}; train with --config=train/configs/colin27.py "
    f"--config.data.dir={pathlib.Path(args.out) / '2d'}  (classes: {names})"
  )


if __name__ == "__main__":
  main()
