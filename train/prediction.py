"""Segmenting new images or volumes with a trained run, or an ensemble of runs: the work of
``python -m train.predict`` (:mod:`train.predict` parses its flags), for use from Python.

Each input is prepared as the run's training images were (its ``inference.json``), its class
probabilities computed through sliding windows (averaged over an ensemble's runs), taken back
onto the input's own grid, post-processed as chosen on validation, and written by
:mod:`train.outputs`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from regionloss_jax.data import files, nnunet, preprocess
from regionloss_jax.postprocessing import Postprocessing
from train import outputs, postprocess, predictor, runs

SUFFIXES = {2: files.IMAGE_SUFFIXES + (".npy",), 3: files.VOLUME_SUFFIXES}


class PredictionError(RuntimeError):
  """Some inputs could not be predicted; the message names each with the reason."""


def list_inputs(
  path: str, spatial_dims: int, prep: preprocess.Preprocessing | None = None
) -> tuple[list[pathlib.Path], list[str]]:
  """``(inputs, problems)``: the files to predict, sorted, and a message for each file of the
  folder that is not a supported input of a ``spatial_dims``-D run.

  A run whose ``prep`` takes one file per channel gets each complete case's ``_0000`` file
  (:func:`regionloss_jax.data.nnunet.input_cases`), and a message for each incomplete case.
  """
  path = pathlib.Path(path).expanduser()
  kind = "image" if spatial_dims == 2 else "volume"
  if path.is_file():
    candidates = [path]
  elif path.is_dir():
    candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
  else:
    raise FileNotFoundError(f"--input={path}: no such file or folder")
  if prep is not None and prep.channel_files:
    return nnunet.input_cases(candidates, prep)
  inputs, problems = [], []
  for candidate in candidates:
    if candidate.name.lower().endswith(SUFFIXES[spatial_dims]):
      inputs.append(candidate)
    else:
      problems.append(
        f"{candidate}: not a {kind} file of this {spatial_dims}-D run (expected "
        f"{', '.join(SUFFIXES[spatial_dims])})"
      )
  return inputs, problems


def read_input(path: pathlib.Path, spatial_dims: int, prep: preprocess.Preprocessing | None = None):
  """``(array, spacing, affine, header)`` of an input file (2-D: no geometry); for a run
  taking one file per channel, of the case of channel file ``path``, channels stacked."""
  if prep is not None and prep.channel_files:
    return nnunet.read_channels(nnunet.case_files(path, prep), spatial_dims)
  if spatial_dims == 3:
    # Several channels in one file: the Decathlon's 4-D NIfTI, (D, H, W, C).
    volume = files.read_volume(path, channels=prep is not None and prep.channels > 1)
    return volume.array, volume.spacing, volume.affine, volume.header
  if path.name.lower().endswith(".npy"):
    return np.load(path, allow_pickle=False), None, None, None
  return files.read_image(path), None, None, None


def predict_file(
  path: pathlib.Path,
  model: predictor.Predictor | Sequence[predictor.Predictor],
  run: runs.TrainedRun,
  out: str,
  *,
  save_probabilities: bool,
  postprocessing: Postprocessing | None = None,
) -> str:
  """Segments one file and writes its mask (and probabilities); returns the mask's path.

  ``model`` is one run's, or an ensemble's (the mean of their probabilities); ``run`` says
  how the input is prepared (one way for every member) and names the classes;
  ``postprocessing`` is applied to the mask on the input's own grid (the probabilities are
  saved as predicted).
  """
  models = [model] if isinstance(model, predictor.Predictor) else list(model)
  prep = run.preprocessing
  array, spacing, affine, header = read_input(path, prep.spatial_dims, prep)
  try:
    image = preprocess.model_input(prep, array, spacing)
  except ValueError as error:
    raise ValueError(f"{error} (shape {array.shape})") from error
  probs = predictor.mean_probabilities(models, image[None])[0]
  spatial = array.shape[: prep.spatial_dims]
  probs = preprocess.to_original(prep, probs, spatial, spacing)
  name = nnunet.case_name(path, prep)  # <case><ending> for one file per channel
  classes = np.argmax(probs, axis=-1)
  if postprocessing is not None:
    pixel = postprocess.original_grid_spacing(prep, spatial, spacing)
    classes = postprocessing.apply(classes, spacing=pixel)
  mask = outputs.write_mask(classes, out, name, affine=affine, header=header)
  if save_probabilities:
    outputs.write_probabilities(probs, out, name, run.class_names)
  return mask


def _collisions(
  inputs: list[pathlib.Path], out: str, spatial_dims: int, prep: preprocess.Preprocessing
) -> list[str]:
  """Inputs whose mask would overwrite an input or another input's mask."""
  suffix = ".png" if spatial_dims == 2 else ".nii.gz"
  targets, problems = {}, []
  sources = {p.resolve() for p in inputs}
  for path in inputs:
    name = nnunet.case_name(path, prep)
    target = (pathlib.Path(out) / (outputs.stem(name) + suffix)).resolve()
    if target in sources:
      problems.append(f"{path}: its mask {target} would overwrite an input; choose another --out")
    elif target in targets:
      problems.append(f"{path}: same stem as {targets[target]}; both masks would be {target}")
    else:
      targets[target] = path
  return problems


def predict(
  workdir: str | Sequence[str],
  input_path: str,
  out: str,
  *,
  checkpoint: str = "best",
  tta: bool = False,
  save_probabilities: bool = False,
  postprocess_masks: bool = True,
) -> list[str]:
  """Predicts every input of this process's share; returns the paths of the masks written.

  ``workdir``: one run, or several runs or cross-validation directories, an ensemble
  (:func:`train.runs.member_workdirs`). ``postprocess_masks``: apply the post-processing
  chosen on validation (:func:`train.postprocess.for_ensemble`), where the runs have one.

  Raises:
    ConfigError: the runs of an ensemble disagree (naming the run that differs).
    PredictionError: after every other input was predicted, naming each input that failed.
  """
  workdirs = [workdir] if isinstance(workdir, str) else list(workdir)
  records = [runs.read_run(w) for w in runs.member_workdirs(workdirs)]
  runs.check_members_agree(records)
  spatial_dims = records[0].preprocessing.spatial_dims
  inputs, problems = list_inputs(input_path, spatial_dims, records[0].preprocessing)
  collisions = _collisions(inputs, out, spatial_dims, records[0].preprocessing)
  if collisions:
    raise PredictionError("nothing was written:\n" + "\n".join(f"  - {c}" for c in collisions))
  os.makedirs(out, exist_ok=True)
  members = [runs.restore(record, checkpoint=checkpoint) for record in records]
  models = [
    predictor.Predictor(m.config, m.eval_graphdef, window=m.window, tta=tta).load(m.params, m.rest)
    for m in members
  ]
  run = members[0]
  chosen = None
  if postprocess_masks:
    chosen = postprocess.for_ensemble(
      [r.workdir for r in records],
      num_classes=len(run.class_names),
      ignore_index=None,
      max_present_dice_drop=run.config.inference.get("postprocess_max_dice_drop"),
    )
    if chosen is not None and chosen.is_identity:
      chosen = None
    if chosen is not None:
      logging.info("post-processing the masks: %s", {k: str(r) for k, r in chosen.rules.items()})
  mine = inputs[jax.process_index() :: jax.process_count()]
  if len(members) == 1:
    logging.info(
      "predicting %d of %d input(s) with checkpoint %d of %s",
      len(mine),
      len(inputs),
      run.step,
      records[0].workdir,
    )
  else:
    logging.info(
      "predicting %d of %d input(s) with an ensemble of %d runs: %s",
      len(mine),
      len(inputs),
      len(members),
      ", ".join(
        f"{r.workdir} (checkpoint {m.step})" for r, m in zip(records, members, strict=True)
      ),
    )
  written = []
  for path in tqdm(mine, unit="input", dynamic_ncols=True, disable=jax.process_index() != 0):
    try:
      written.append(
        predict_file(
          path,
          models,
          run,
          out,
          save_probabilities=save_probabilities,
          postprocessing=chosen,
        )
      )
    except Exception as error:  # noqa: BLE001  (readers raise many types; report and go on)
      message = f"{path}: {type(error).__name__}: {error}"
      logging.error("cannot predict %s", message)
      problems.append(message)
  if problems:
    raise PredictionError(
      f"{len(written)} mask(s) written to {out}; {len(problems)} input(s) "
      "failed:\n" + "\n".join(f"  - {p}" for p in problems)
    )
  return written
