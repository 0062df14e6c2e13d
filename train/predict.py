"""``python -m train.predict --workdir=DIR [--workdir=DIR ...] --input=PATH --out=DIR
[--checkpoint=best] [--tta] [--save_probabilities]``: segment new images or volumes with a
trained run, or with an ensemble of runs.

PATH is one file or a folder of them: PNG, JPEG, TIFF, BMP or ``.npy`` for a 2-D run;
NIfTI (``.nii``, ``.nii.gz``) or ``.npy`` for a 3-D run. No masks are needed. Each input is
prepared as the run's training images were (channels, scaling, normalisation, resizing or
voxel spacing: the run's ``inference.json``), segmented whole through sliding windows of
the training patch size, and its mask written to ``OUT/<stem>.png`` (class ids, the input's
own height and width) or ``OUT/<stem>.nii.gz`` (the input's affine and header, on its own
grid even when the run resampled to ``data.spacing``). ``--save_probabilities`` also writes
``OUT/<stem>.npz`` with the class probabilities on that grid. The run's post-processing
chosen on validation (``postprocessing.json``: per class, the largest component kept or
small components dropped, where that raised the validation Dice) is applied to the masks;
``--nopostprocess`` writes them as predicted.

Several ``--workdir`` runs, or one cross-validation directory holding ``fold_*/config.json``
(``python -m train --workdir=CV/fold_K --config.train.fold=K`` for each K), predict as an
ensemble: each input is prepared once, every run's class probabilities are computed (each
with its own window) and averaged, as nnU-Net ensembles its folds, and the mean is taken to
the input's grid, argmax'd and saved. The runs must agree on class names, preprocessing,
spatial dims and loss mode; ``--checkpoint`` and ``--tta`` apply to each.

A run trained on an nnU-Net dataset (``data.name='nnunet'``) with one file per channel
takes its inputs as the dataset's ``imagesTs``: ``<case>_0000<ending>``, ``<case>_0001<ending>``
... are one case, its channels stacked in order, its mask ``OUT/<case>.nii.gz`` (or ``.png``)
with the first channel file's affine and header; a case missing a channel is reported by
name. ``--input`` may also be one channel file of a case: its sibling channels are found.

An input that cannot be read, or whose channels the model cannot take, is reported and
skipped; the others are still predicted, and the exit status is 1 if any input failed. With
several processes (``--coordinator_address`` ...), each predicts its own share.
"""

from absl import app, flags

from train import cli, parallel, prediction, run_log, user_errors, xla_flags

_WORKDIR = flags.DEFINE_multi_string(
  "workdir",
  None,
  "A run directory made by python -m train; several (or a cross-validation directory "
  "holding fold_*/config.json) predict as an ensemble.",
  required=True,
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
_POSTPROCESS = flags.DEFINE_bool(
  "postprocess",
  True,
  "Apply the run's post-processing chosen on validation (postprocessing.json; for an "
  "ensemble, the rules chosen on all its runs' validation images); --nopostprocess: the "
  "masks as predicted.",
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()
  parallel.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )
  # An ensemble logs to its first directory (a cross-validation directory, or the first run).
  run_log.log_to_workdir(_WORKDIR.value[0], create=False)
  written = prediction.predict(
    _WORKDIR.value,
    _INPUT.value,
    _OUT.value,
    checkpoint=_CHECKPOINT.value,
    tta=_TTA.value,
    save_probabilities=_PROBABILITIES.value,
    postprocess_masks=_POSTPROCESS.value,
  )
  print(f"{len(written)} mask(s) written to {_OUT.value}")


if __name__ == "__main__":
  user_errors.run(main, failures=(prediction.PredictionError,), flags_parser=cli.flags_parser())
