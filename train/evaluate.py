"""``python -m train.evaluate --workdir=DIR [--split=test] [--checkpoint=best] [--out=DIR]``.

Evaluates a trained run's checkpoint on a split with the run's own config, prints the
metrics, writes ``OUT/summary.json`` and the predicted masks: PNG (class ids as pixel
values) for 2-D data, NIfTI for 3-D volumes. OUT defaults to ``DIR/predictions/<split>``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import app, flags

from train import checkpoints, config_checks, datasets, evaluation, optim, xla_flags
from train import step as step_lib
from train.loop import CONFIG_FILE

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory made by python -m train.",
                               required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best",
                                  "'best' (by validation Dice), 'latest' or a step number.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default WORKDIR/predictions/SPLIT).")


def _write_mask(mask: np.ndarray, path: str) -> str:
  if mask.ndim == 3:
    import nibabel
    path += ".nii.gz"
    nibabel.save(nibabel.Nifti1Image(mask.astype(np.uint8), np.eye(4)), path)
  else:
    from PIL import Image
    path += ".png"
    Image.fromarray(mask.astype(np.uint8)).save(path)
  return path


def evaluate_checkpoint(workdir: str, *, split: str = "test", checkpoint: str = "best",
                        out: str | None = None) -> dict:
  """Evaluates ``checkpoint`` of the run in ``workdir``; returns the summary."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a run made by python -m train.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config_checks.check_config(config)
  data = datasets.open_split(config, split)
  model = step_lib.make_model(config, in_channels=np.shape(data.source[0]["image"])[-1],
                              num_classes=data.num_classes, seed=config.train.seed)
  optimizer = optim.make_optimizer(config)
  _, eval_graphdef, state = step_lib.init_state(model, optimizer)
  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  if checkpoint == "best":
    step = checkpoints.best_step(mngr) or mngr.latest_step()
  elif checkpoint == "latest":
    step = mngr.latest_step()
  else:
    step = int(checkpoint)
  if step is None or step not in mngr.all_steps():
    raise ValueError(f"checkpoint {checkpoint!r} not found in {workdir}/checkpoints; "
                     f"available steps: {sorted(mngr.all_steps())}.")
  state, _ = checkpoints.restore(mngr, step, jax.eval_shape(lambda: state))
  eval_step = evaluation.make_eval_step(config, eval_graphdef)
  out = out or os.path.join(workdir, "predictions", split)
  os.makedirs(out, exist_ok=True)
  weight = float(optim.loss_weight_schedule(config)(step))
  result = evaluation.evaluate(eval_step, state.params, state.rest,
                               datasets.eval_pipeline(config, data), weight=weight,
                               class_names=data.class_names, keep=len(data))
  for index, (_, _, pred) in enumerate(result["samples"]):
    _write_mask(pred, os.path.join(out, f"{index:05d}"))
  summary = {**result["summary"], "checkpoint_step": int(step), "split": split}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()  # the same XLA as training, so the same numbers
  summary = evaluate_checkpoint(_WORKDIR.value, split=_SPLIT.value,
                                checkpoint=_CHECKPOINT.value, out=_OUT.value)
  print(json.dumps({k: v for k, v in summary.items() if k != "per_class"}, indent=2))


if __name__ == "__main__":
  app.run(main)
