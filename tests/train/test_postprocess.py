"""The run's post-processing: statistics gathered from the images a process saw choose the
same rules as a search that saw the masks; an ensemble chooses on all its runs' validation
images pooled; the rules apply on an input's own grid in the units they were chosen in."""

import numpy as np
import pytest

from regionloss_jax.data.preprocess import Preprocessing
from regionloss_jax.postprocessing import PostprocessingSearch
from train import postprocess
from train.user_errors import ConfigError

NUM_CLASSES = 3


def _case(rng, speck: bool):
  """A square of class 1, a bar of class 2 and, optionally, specks of class 1 predicted in
  an image whose truth has none."""
  label = np.zeros((16, 16), np.int32)
  if not speck:
    label[2:8, 2:8] = 1
  label[10:12, 3:13] = 2
  pred = label.copy()
  pred[rng.integers(0, 16), rng.integers(0, 16)] = 2
  if speck:
    pred[14, 14] = 1
  return pred, label


def _examples(seed: int, count: int):
  rng = np.random.default_rng(seed)
  return [_case(rng, speck=i % 2 == 1) for i in range(count)]


def _rows(cases, first_index=0):
  search = PostprocessingSearch(NUM_CLASSES)
  on_image, rows = postprocess.collector(search, None)
  for i, (pred, label) in enumerate(cases):
    probs = np.eye(NUM_CLASSES, dtype=np.float32)[pred]
    on_image({"image": None, "label": label, "index": first_index + i}, probs)
  return postprocess.gather(rows)


def _direct(cases):
  search = PostprocessingSearch(NUM_CLASSES)
  for pred, label in cases:
    search.add(pred, label)
  return search.choose()


def test_rows_choose_what_a_search_on_the_masks_chooses():
  cases = _examples(0, 6)
  chosen = postprocess.choose_from_rows(PostprocessingSearch(NUM_CLASSES), _rows(cases))
  assert chosen.to_dict() == _direct(cases).to_dict()
  assert chosen.rules[1].kind != "none"  # the specks are worth removing


def test_rows_in_any_process_order_give_the_same_choice():
  cases = _examples(1, 5)
  rows = _rows(cases)
  shuffled = rows[np.random.default_rng(0).permutation(len(rows))]
  # gather sorts by image and class; the components of one image and class keep their order.
  by_image = shuffled[np.lexsort((shuffled[:, 1], shuffled[:, 0]))]
  direct = postprocess.choose_from_rows(PostprocessingSearch(NUM_CLASSES), rows)
  again = postprocess.choose_from_rows(PostprocessingSearch(NUM_CLASSES), by_image)
  assert again.rules == direct.rules


def test_an_ensemble_chooses_on_every_runs_validation_images(tmp_path):
  folds = [_examples(seed, 4) for seed in (2, 3)]
  workdirs = []
  for number, cases in enumerate(folds):
    workdir = tmp_path / f"fold_{number}"
    workdir.mkdir()
    rows = _rows(cases)  # each fold numbers its own validation images from 0
    chosen = postprocess.choose_from_rows(PostprocessingSearch(NUM_CLASSES), rows)
    postprocess.write(str(workdir), chosen, rows, ("background", "a", "b"))
    assert postprocess.read(str(workdir)).to_dict() == chosen.to_dict()
    workdirs.append(str(workdir))
  pooled = postprocess.for_ensemble(workdirs, num_classes=NUM_CLASSES, ignore_index=None)
  assert pooled.to_dict() == _direct(folds[0] + folds[1]).to_dict()
  assert pooled.classes[1].num_images == 8


def test_an_ensemble_with_a_run_without_postprocessing_gets_none(tmp_path):
  with_one, without = tmp_path / "a", tmp_path / "b"
  with_one.mkdir(), without.mkdir()
  rows = _rows(_examples(4, 4))
  chosen = postprocess.choose_from_rows(PostprocessingSearch(NUM_CLASSES), rows)
  postprocess.write(str(with_one), chosen, rows, ("background", "a", "b"))
  assert postprocess.read(str(without)) is None
  dirs = [str(with_one), str(without)]
  assert postprocess.for_ensemble(dirs, num_classes=NUM_CLASSES, ignore_index=None) is None


def test_a_damaged_record_is_named(tmp_path):
  (tmp_path / postprocess.POSTPROCESSING_FILE).write_text("{not json")
  with pytest.raises(ConfigError, match="postprocessing.json: not a post-processing record"):
    postprocess.read(str(tmp_path))


def test_original_grid_spacing_is_in_the_units_the_rules_were_chosen_in():
  # A volume's own spacing in mm, whatever the working grid (its rules were in mm).
  volume = Preprocessing(spatial_dims=3, channels=1, mean=(0.5,), std=(0.25,), spacing=(2, 1, 1))
  assert postprocess.original_grid_spacing(volume, (10, 20, 20), (4.0, 0.5, 0.5)) == (4, 0.5, 0.5)
  # A 2-D image resized from 100 x 50 to 50 x 50: each of its rows spans half a pixel.
  image = Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,), size=(50, 50))
  assert postprocess.original_grid_spacing(image, (100, 50), None) == (0.5, 1.0)
  native = Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,))
  assert postprocess.original_grid_spacing(native, (37, 41), None) == (1.0, 1.0)
