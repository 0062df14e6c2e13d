"""The Colin27 / AAL builder on a small synthetic template with an AAL-like label file."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from regionloss_jax import data
from regionloss_jax.data import colin27

T, V, S = "train", "validation", "test"
LABEL_FILE = """\
1 Precentral_L 2001
2 Precentral_R 2002
5 Thalamus_L 7101
6 Thalamus_R 7102
7 Caudate_L 7001
9 Pallidum_R 7022
12 Cerebelum_Crus1_L 9001
14 Vermis_1_2 9100
20 Amygdala_L 4201
"""
# Structure ids: cortex 1, cerebellum 2, thalamus 3, caudate 5, pallidum 7, amygdala 8.
EXPECTED = {1: 1, 2: 1, 5: 3, 6: 3, 7: 5, 9: 7, 12: 2, 14: 2, 20: 8}


@pytest.fixture
def templates(tmp_path):
  """A 40x12x10 (x, y, z) 'brain' in slices x = 2..37; every labelled slice holds the same
  pattern of AAL labels, so every split holds every structure present."""
  shape = (40, 12, 10)
  aal = np.zeros(shape, np.uint8)
  pattern = np.zeros(shape[1:], np.uint8)
  pattern[1:6, 1:9] = 1  # cortex, left
  pattern[6:11, 1:9] = 2  # cortex, right
  pattern[2, 2], pattern[3, 3], pattern[4, 4] = 5, 6, 7
  pattern[7, 2], pattern[8, 3] = 9, 20
  pattern[9, 5:7], pattern[10, 7] = 12, 14
  aal[2:38] = pattern
  t1 = np.where(aal > 0, 60 + 10 * (aal % 3), 0).astype(np.uint8)
  affine = np.array([[1.0, 0, 0, -20], [0, 1, 0, -6], [0, 0, 1, -5], [0, 0, 0, 1]])
  folder = tmp_path / "templates"
  folder.mkdir()
  nib.save(nib.Nifti1Image(t1, affine), folder / colin27.TEMPLATE)
  nib.save(nib.Nifti1Image(aal, affine), folder / colin27.ATLAS)
  (folder / colin27.ATLAS_NAMES).write_text(LABEL_FILE)
  return folder


def test_label_file_and_grouping():
  names = {
    1: "Precentral_L",
    5: "Thalamus_L",
    12: "Cerebelum_Crus1_L",
    14: "Vermis_1_2",
    20: "Amygdala_R",
    37: "Hippocampus_L",
    39: "ParaHippocampal_L",
  }
  assert [colin27.structure_of(n) for n in names.values()] == [
    "cortex",
    "thalamus",
    "cerebellum",
    "cerebellum",
    "amygdala",
    "hippocampus",
    "cortex",
  ]
  atlas = np.array([[0, 1, 5], [12, 14, 20], [37, 39, 0]])
  grouped = colin27.group_labels(atlas, names)
  assert grouped.dtype == np.uint8
  np.testing.assert_array_equal(grouped, [[0, 1, 3], [2, 2, 8], [6, 1, 0]])
  with pytest.raises(ValueError, match=r"atlas values \[7\] are not in the label file"):
    colin27.group_labels(np.array([0, 7, 1]), names)


def test_malformed_label_file_is_named(tmp_path):
  path = tmp_path / "labels.txt"
  path.write_text("1 Precentral_L 2001\nPrecentral_R 2002\n")
  with pytest.raises(ValueError, match=r"labels.txt, line 2: expected"):
    colin27.read_label_names(path)


def test_slab_split_by_hand():
  # Slabs of 2: T T | V V | T T | S S | T T | V V; train slices next to V or S, dropped.
  splits = colin27.slice_splits(12, slab=2, gap=1, pattern=(T, V, T, S))
  np.testing.assert_array_equal(splits, [0, -1, 1, 1, -1, -1, 2, 2, -1, -1, 1, 1])
  shifted = colin27.slice_splits(6, slab=2, gap=0, pattern=(T, V, T, S), offset=1)
  np.testing.assert_array_equal(shifted, [0, 1, 1, 0, 0, 2])


@pytest.mark.parametrize("slab,gap,offset", [(1, 0, 0), (3, 1, 2), (4, 2, 5), (5, 3, 0)])
def test_no_evaluated_slice_has_a_training_neighbour(slab, gap, offset):
  splits = colin27.slice_splits(97, slab=slab, gap=gap, offset=offset)
  for i in np.flatnonzero(splits >= 1):
    near = splits[max(0, i - gap) : i + gap + 1]
    assert not (near == 0).any()
    if splits[i] == 1:
      assert not (near == 2).any()
  assert {0, 1, 2} <= set(splits.tolist())


def test_build_writes_both_versions_that_the_loaders_read(templates, tmp_path):
  out = tmp_path / "colin"
  record = colin27.build(templates, out, slab=3, gap=1, pattern=(T, T, V, T, T, S))
  assert record == json.loads((out / "dataset.json").read_text())
  assert record["class_names"] == list(colin27.STRUCTURES)
  assert all(record["slices"][s] for s in colin27.SPLITS)
  assert record["first_slice"] == 2
  atlas = np.asarray(nib.load(templates / colin27.ATLAS).dataobj)
  labels = np.zeros_like(atlas)
  for aal_id, structure in EXPECTED.items():
    labels[atlas == aal_id] = structure
  # Every structure in the synthetic brain, and only those, in every split.
  for split in colin27.SPLITS:
    assert record["missing"][split] == ["putamen", "hippocampus"]
  train, test = set(record["slices"]["train"]), set(record["slices"]["test"])
  assert min(abs(a - b) for a in train for b in test) > 1

  # 2-D: one PNG pair per slice, the slice flipped so z points up.
  index = record["slices"]["test"][0]
  mask = np.asarray(Image.open(out / "2d" / "test" / "masks" / f"colin27_x{index:03d}.png"))
  np.testing.assert_array_equal(mask, np.flipud(labels[index].T))
  loaded = data.load(
    "folder",
    root=out / "2d",
    split="test",
    num_classes=9,
    class_names=colin27.STRUCTURES,
    image_size=None,
    cache_dir=tmp_path / "c",
  )
  assert len(loaded) == len(record["slices"]["test"])
  assert loaded.class_names == colin27.STRUCTURES

  # 3-D: runs of slices whose affine puts them back in the template.
  template_affine = nib.load(templates / colin27.ATLAS).affine
  covered = []
  for path in sorted((out / "3d").glob("*/masks/*.nii.gz")):
    volume = nib.load(path)
    start = int(path.name.split("_x")[1].split("-")[0])
    np.testing.assert_allclose(volume.affine[:3, 3], (template_affine @ [start, 0, 0, 1])[:3])
    run = np.asarray(volume.dataobj)
    np.testing.assert_array_equal(run, labels[start : start + len(run)])
    covered += range(start, start + len(run))
  assert sorted(covered) == sorted(i for s in record["slices"].values() for i in s)


def test_bad_inputs_are_named_and_nothing_is_overwritten(templates, tmp_path):
  out = tmp_path / "colin"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="colin exists"):
    colin27.build(templates, out)
  assert (out / "keep.txt").read_text() == "mine"
  (templates / colin27.ATLAS_NAMES).unlink()
  with pytest.raises(FileNotFoundError, match="aal.nii.txt"):
    colin27.build(templates, tmp_path / "other")
  assert not (tmp_path / "other").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_command_line(templates, tmp_path, capsys):
  colin27.main(
    ["--templates", str(templates), "--out", str(tmp_path / "c"), "--slab", "3", "--gap", "1"]
  )
  printed = capsys.readouterr().out
  assert "train" in printed and "--config.data.dir=" in printed
  with pytest.raises(SystemExit, match="exists"):
    colin27.main(["--templates", str(templates), "--out", str(tmp_path / "c")])
