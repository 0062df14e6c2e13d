"""``python -m train.predict --workdir=DIR --input=PATH --out=DIR [--checkpoint=best]
[--tta] [--save_probabilities]``: segment new images or volumes with a trained run.

PATH is one file or a folder of them: PNG, JPEG, TIFF, BMP or ``.npy`` for a 2-D run;
NIfTI (``.nii``, ``.nii.gz``) or ``.npy`` for a 3-D run. No masks are needed. Each input is
prepared as the run's training images were (channels, scaling, normalisation, resizing or
voxel spacing: the run's ``inference.json``), segmented whole through sliding windows of
the training patch size, and its mask written to ``OUT/<stem>.png`` (class ids, the input's
own height and width) or ``OUT/<stem>.nii.gz`` (the input's affine and header, on its own
grid even when the run resampled to ``data.spacing``). ``--save_probabilities`` also writes
``OUT/<stem>.npz`` with the class probabilities on that grid.

An input that cannot be read, or whose channels the model cannot take, is reported and
skipped; the others are still predicted, and the exit status is 1 if any input failed. With
several processes (``--coordinator_address`` ...), each predicts its own share.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from regionloss_jax.data import files, preprocess
from train import cli, outputs, parallel, predictor, run_log, runs, user_errors, xla_flags

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A run directory made by python -m train.", required=True
)
_INPUT = flags.DEFINE_string(
  "input", None, "An image or volume file, or a folder of them.", required=True
)
_OUT = flags.DEFINE_string("out", None, "Folder for the masks (created if needed).", required=True)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", "best", "'best' (by validation Dice), 'latest' or a step number."
)
_TTA = flags.DEFINE_bool("tta", False, "Average over mirroring every spatial axis.")
_PROBABILITIES = flags.DEFINE_bool(
  "save_probabilities", False, "Also write the class probabilities as OUT/<stem>.npz."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Processes in a multi-process run.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index, from 0.", lower_bound=0
)

SUFFIXES = {2: files.IMAGE_SUFFIXES + (".npy",), 3: files.VOLUME_SUFFIXES}


class PredictionError(RuntimeError):
  """Some inputs could not be predicted; the message names each with the reason."""


def list_inputs(path: str, spatial_dims: int) -> tuple[list[pathlib.Path], list[str]]:
  """``(inputs, problems)``: the files to predict, sorted, and a message for each file of the
  folder that is not a supported input of a ``spatial_dims``-D run."""
  path = pathlib.Path(path).expanduser()
  kind = "image" if spatial_dims == 2 else "volume"
  if path.is_file():
    candidates = [path]
  elif path.is_dir():
    candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
  else:
    raise FileNotFoundError(f"--input={path}: no such file or folder")
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


def read_input(path: pathlib.Path, spatial_dims: int):
  """``(array, spacing, affine, header)`` of an input file (2-D: no geometry)."""
  if spatial_dims == 3:
    volume = files.read_volume(path)
    return volume.array, volume.spacing, volume.affine, volume.header
  if path.name.lower().endswith(".npy"):
    return np.load(path, allow_pickle=False), None, None, None
  return files.read_image(path), None, None, None


def predict_file(
  path: pathlib.Path,
  model: predictor.Predictor,
  run: runs.TrainedRun,
  out: str,
  *,
  save_probabilities: bool,
) -> str:
  """Segments one file and writes its mask (and probabilities); returns the mask's path."""
  prep = run.preprocessing
  array, spacing, affine, header = read_input(path, prep.spatial_dims)
  try:
    image = preprocess.model_input(prep, array, spacing)
  except ValueError as error:
    raise ValueError(f"{error} (shape {array.shape})") from error
  probs = model.probabilities(model.logits(image[None]))[0]
  spatial = array.shape[: prep.spatial_dims]
  probs = preprocess.to_original(prep, probs, spatial, spacing)
  mask = outputs.write_mask(np.argmax(probs, axis=-1), out, path.name, affine=affine, header=header)
  if save_probabilities:
    outputs.write_probabilities(probs, out, path.name, run.class_names)
  return mask


def _collisions(inputs: list[pathlib.Path], out: str, spatial_dims: int) -> list[str]:
  """Inputs whose mask would overwrite an input or another input's mask."""
  suffix = ".png" if spatial_dims == 2 else ".nii.gz"
  targets, problems = {}, []
  sources = {p.resolve() for p in inputs}
  for path in inputs:
    target = (pathlib.Path(out) / (outputs.stem(path.name) + suffix)).resolve()
    if target in sources:
      problems.append(f"{path}: its mask {target} would overwrite an input; choose another --out")
    elif target in targets:
      problems.append(f"{path}: same stem as {targets[target]}; both masks would be {target}")
    else:
      targets[target] = path
  return problems


def predict(
  workdir: str,
  input_path: str,
  out: str,
  *,
  checkpoint: str = "best",
  tta: bool = False,
  save_probabilities: bool = False,
) -> list[str]:
  """Predicts every input of this process's share; returns the paths of the masks written.

  Raises:
    PredictionError: after every other input was predicted, naming each input that failed.
  """
  run = runs.open_run(workdir, checkpoint=checkpoint)
  spatial_dims = run.preprocessing.spatial_dims
  inputs, problems = list_inputs(input_path, spatial_dims)
  collisions = _collisions(inputs, out, spatial_dims)
  if collisions:
    raise PredictionError("nothing was written:\n" + "\n".join(f"  - {c}" for c in collisions))
  os.makedirs(out, exist_ok=True)
  model = predictor.Predictor(run.config, run.eval_graphdef, window=run.window, tta=tta).load(
    run.params, run.rest
  )
  mine = inputs[jax.process_index() :: jax.process_count()]
  logging.info(
    "predicting %d of %d input(s) with checkpoint %d of %s",
    len(mine),
    len(inputs),
    run.step,
    workdir,
  )
  written = []
  for path in tqdm(mine, unit="input", dynamic_ncols=True, disable=jax.process_index() != 0):
    try:
      written.append(predict_file(path, model, run, out, save_probabilities=save_probabilities))
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()
  parallel.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )
  run_log.log_to_workdir(_WORKDIR.value, create=False)
  written = predict(
    _WORKDIR.value,
    _INPUT.value,
    _OUT.value,
    checkpoint=_CHECKPOINT.value,
    tta=_TTA.value,
    save_probabilities=_PROBABILITIES.value,
  )
  print(f"{len(written)} mask(s) written to {_OUT.value}")


if __name__ == "__main__":
  user_errors.run(main, failures=(PredictionError,), flags_parser=cli.flags_parser())
