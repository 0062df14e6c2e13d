"""``python -m train.evaluate --workdir=DIR [--split=test] [--checkpoint=best] [--out=DIR]``.

Evaluates a trained run's checkpoint on a labelled split with the run's own config and the
inference path of training (whole images through sliding windows), prints the metrics,
writes ``OUT/summary.json`` and one predicted mask per image, named by the image's file
stem and at the file's own size: PNG (class ids as pixel values) for 2-D data, NIfTI with
the file's affine for volumes. OUT defaults to ``DIR/predictions/<split>``. The masks are
as predicted; when the run chose a post-processing on validation (``postprocessing.json``),
the summary also holds every metric after it (``"postprocessed"``).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from regionloss_jax.data import preprocess
from train import (
  cli,
  config_checks,
  datasets,
  optim,
  outputs,
  postprocess,
  predictor,
  run_log,
  runs,
  scoring,
  user_errors,
  xla_flags,
)

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A run directory made by python -m train.", required=True
)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", "best", "'best' (by validation Dice), 'latest' or a step number."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default WORKDIR/predictions/SPLIT).")
_TTA = flags.DEFINE_bool(
  "tta", None, "Mirroring test-time augmentation (default: the run's config.inference.tta)."
)


def mask_writer(run: runs.TrainedRun, out: str):
  """``on_image(example, probs)`` that writes the example's mask on its file's grid."""

  def write(example: dict, probs: np.ndarray) -> None:
    original = probs
    if "original_shape" in example:
      spacing = tuple(example["spacing"]) if "spacing" in example else None
      original = preprocess.to_original(
        run.preprocessing, probs, tuple(example["original_shape"]), spacing
      )
    outputs.write_mask(
      np.argmax(original, axis=-1), out, example["name"], affine=example.get("affine")
    )

  return write


def evaluate_checkpoint(
  workdir: str,
  *,
  split: str = "test",
  checkpoint: str = "best",
  out: str | None = None,
  tta: bool | None = None,
) -> dict:
  """Evaluates ``checkpoint`` of the run in ``workdir``; returns the summary."""
  run = runs.open_run(workdir, checkpoint=checkpoint)
  data = datasets.open_split(run.config, split)
  config_checks.check_ignore_index(run.config, data.ignore_index)
  out = out or os.path.join(workdir, "predictions", split)
  os.makedirs(out, exist_ok=True)
  model = predictor.Predictor(run.config, run.eval_graphdef, window=run.window, tta=tta).load(
    run.params, run.rest
  )
  result = scoring.evaluate_split(
    model,
    scoring.make_score_fn(run.config, ignore_index=data.ignore_index),
    datasets.eval_examples(run.config, data),
    weight=float(optim.loss_weight_schedule(run.config)(run.step)),
    class_names=data.class_names,
    ignore_index=data.ignore_index,
    on_image=mask_writer(run, out),
    preprocessing=data.preprocessing,
    nsd_tolerance=run.config.inference.get("nsd_tolerance", 1.0),
    # The run's post-processing, when it chose one: the metrics after it too.
    postprocessing=postprocess.read(workdir),
  )
  summary = {**result["summary"], "checkpoint_step": run.step, "split": split}
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()  # the same XLA as training, so the same numbers
  run_log.log_to_workdir(_WORKDIR.value, create=False)
  summary = evaluate_checkpoint(
    _WORKDIR.value, split=_SPLIT.value, checkpoint=_CHECKPOINT.value, out=_OUT.value, tta=_TTA.value
  )
  print(json.dumps({k: v for k, v in summary.items() if k != "per_class"}, indent=2))


if __name__ == "__main__":
  user_errors.run(main, flags_parser=cli.flags_parser())
