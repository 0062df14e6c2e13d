"""``python -m train.compare --config=train/configs/compare.py --workdir=DIR``: the study.

Which loss should I use? For every compound in ``config.losses`` whose spec fixes neither
its weight nor its temperature, a grid (``config.tune``: weights, and temperatures for the
region terms ``l1``/``kl``/``db``) is trained with ``config.tune.seed`` and scored on the
**validation** split only (those runs never open the test split); the best setting is kept.
Then every loss, with its chosen setting, is trained with each seed in
``range(config.seeds)`` (same data order per seed across losses) and evaluated on the test
split. Each run is an ordinary, resumable workdir (``DIR/tune/...``, ``DIR/runs/<loss>/
seed_<k>``); re-running the command trains only what is missing. SIGTERM or Ctrl-C stops
the run in progress after a checkpoint (exit status 128 + the signal), and the same command
goes on from there.

Writes ``DIR/report.json``, ``DIR/report.md`` and the figures in ``DIR/figures/``: means and
standard deviations over seeds, and every loss paired against ``ce`` on the same test
images (:mod:`train.statistics`: bootstrap interval over images, Wilcoxon signed-rank
p-value, Holm-adjusted over the losses), overall and per class, and the steps each run
trained: all of ``base.train.steps``, or fewer with early stopping (``base.train.patience``;
``train/configs/compare_convergence.py`` trains every run to convergence that way).
"""

from __future__ import annotations

import ast
import json
import os
import re

import ml_collections
import numpy as np
from absl import app, flags, logging

from train import (
  cli,
  loop,
  parallel,
  preemption,
  reporting,
  run_log,
  statistics,
  user_errors,
  write_errors,
  xla_flags,
)
from train import compare_figures as figures
from train.configs import base as base_config

FIELDS_FILE = "train/configs/compare.py (the study) and train/configs/base.py (base.*)"
_CONFIG = cli.define_config_flag(
  "train/configs/compare.py", "Study configuration file.", fields_file=FIELDS_FILE
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)

ALIASES = {"ce+logdice": ("ce+dice", {"log": True}), "logdice": ("dice", {"log": True})}
METRICS = (
  "dice",
  "iou",
  "hd95",
  "nsd",
  "detection_rate",
  "absent_false_positive_rate",
  "proportion_mae",
  "proportion_bias",
  "ece",
)
# Which direction is better, for marking the best value of each column.
BETTER = {
  "dice": max,
  "iou": max,
  "hd95": min,
  "nsd": max,
  "detection_rate": max,
  "absent_false_positive_rate": min,
  "proportion_mae": min,
  "ece": min,
  "proportion_bias": lambda values: min(values, key=abs),
}
REFERENCE = "ce"
ALPHA = 0.05


def parse_loss(spec: str) -> tuple[str, dict]:
  """``"ce+dice(log=True, smooth_nr=0)"`` -> ``("ce+dice", {"log": True, "smooth_nr": 0})``."""
  match = re.fullmatch(r"\s*([\w+]+)\s*(?:\((.*)\))?\s*", spec)
  if not match:
    raise user_errors.ConfigError(
      f"cannot parse loss {spec!r}; write NAME or NAME(option=value, ...)"
    )
  name, arguments = match.groups()
  name, options = ALIASES.get(name, (name, {}))
  options = dict(options)
  for item in filter(None, (arguments or "").split(",")):
    key, _, value = item.partition("=")
    try:
      options[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise user_errors.ConfigError(
        f"loss {spec!r}: option {item.strip()!r} needs a Python literal value"
      ) from None
  return name, options


def run_config(
  base: ml_collections.ConfigDict, spec: str, seed: int, **overrides
) -> ml_collections.ConfigDict:
  """``base`` with the loss of ``spec``, ``train.seed = seed`` and the loss ``overrides``."""
  name, options = parse_loss(spec)
  config = ml_collections.ConfigDict(base.to_dict())
  config.loss.name = name
  for key, value in {**options, **overrides}.items():
    if key not in config.loss or key == "weight_schedule":
      raise user_errors.ConfigError(
        f"loss {spec!r}: unknown option {key!r}; valid: "
        f"{', '.join(['weight', *base_config.LOSS_OPTION_TYPES])}"
      )
    config.loss[key] = value
  config.train.seed = seed
  return config


def tuning_grid(spec: str, tune: ml_collections.ConfigDict) -> list[dict]:
  """The settings to try for ``spec``: weights x temperatures (region terms only); none for
  single losses and for specs that fix their weight or temperature themselves."""
  name, options = parse_loss(spec)
  parts = name.split("+")
  if len(parts) != 2 or {"weight", "temperature"} & set(options):
    return []
  temperatures = tune.temperatures if parts[1] in base_config.REGION_TERMS else (None,)
  return [
    {"weight": float(w), "temperature": None if t is None else float(t)}
    for w in tune.weights
    for t in temperatures
  ]


def _setting_overrides(setting: dict) -> dict:
  return {k: v for k, v in setting.items() if v is not None}


def _slug(text: str) -> str:
  return re.sub(r"[^\w+.=-]+", "_", text).strip("_")


TRAINING_KEYS = ("steps_trained", "best_step", "stopped_early")


def _read_summary(workdir: str) -> dict:
  with open(os.path.join(workdir, loop.SUMMARY_FILE)) as f:
    return json.load(f)


def _training(workdir: str, finished: dict) -> dict:
  """``{steps_trained, best_step, stopped_early}`` of a finished run's ``summary.json``.

  Summaries written before early stopping lack them: those runs trained all their steps.
  """
  if all(key in finished for key in TRAINING_KEYS):
    return {key: finished[key] for key in TRAINING_KEYS}
  with open(os.path.join(workdir, loop.CONFIG_FILE)) as f:
    steps = json.load(f)["train"]["steps"]
  result = finished.get("test") or finished["validation"]
  return {"steps_trained": steps, "best_step": result["checkpoint_step"], "stopped_early": False}


def _read_run(workdir: str) -> dict:
  finished = _read_summary(workdir)
  per_image = dict(np.load(os.path.join(workdir, loop.PER_IMAGE_FILE)))
  return {
    "workdir": workdir,
    "summary": finished["test"],
    "training": _training(workdir, finished),
    "per_image": per_image,
    "records": reporting.read_metrics(workdir),
  }


def tune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every grid point of every tunable loss on the validation split; returns
  ``{spec: {"grid": [{weight, temperature, val_dice, steps_trained, best_step,
  stopped_early, workdir}], "chosen": setting}}``.

  The runs set ``train.evaluate_test = False``: tuning never opens the test split.
  """
  tuned = {}
  for spec in config.losses:
    grid = tuning_grid(spec, config.tune)
    if not grid:
      continue
    points = []
    for setting in grid:
      run = run_config(config.base, spec, config.tune.seed, **_setting_overrides(setting))
      run.train.evaluate_test = False
      run_dir = os.path.join(
        workdir, "tune", _slug(spec), _slug(f"w={setting['weight']}_t={setting['temperature']}")
      )
      logging.info("study: tuning %s %s -> %s", spec, setting, run_dir)
      validation = loop.train_and_evaluate(run, run_dir)
      training = _training(run_dir, _read_summary(run_dir))
      points.append({**setting, "val_dice": validation.get("dice"), **training, "workdir": run_dir})
    # Highest validation Dice; a point with no score loses; ties keep the grid's order.
    best = max(points, key=lambda p: -np.inf if p["val_dice"] is None else p["val_dice"])
    tuned[spec] = {
      "grid": points,
      "chosen": {"weight": best["weight"], "temperature": best["temperature"]},
    }
  return tuned


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values))


def aggregate(runs: list[dict]) -> dict:
  """Mean and standard deviation over seeds of each summary metric, per class too (seeds
  whose value is undefined, e.g. a class absent from the test split, are left out), and of
  the steps trained and the step of the checkpoint tested."""
  out = {}
  for key in METRICS:
    out[key], out[f"{key}_std"] = _mean_std([r["summary"].get(key) for r in runs])
  for key in ("steps_trained", "best_step"):
    out[key], out[f"{key}_std"] = _mean_std([r["training"][key] for r in runs])
  out["distance_unit"] = runs[0]["summary"].get("distance_unit", "px")
  classes = runs[0]["summary"]["per_class"]
  out["per_class"] = {
    name: {
      key: _mean_std([r["summary"]["per_class"][name].get(key) for r in runs])[0] for key in METRICS
    }
    for name in classes
  }
  out["runs"] = [
    {
      "workdir": r["workdir"],
      "seed": seed,
      **{key: r["summary"].get(key) for key in METRICS},
      **r["training"],
    }
    for seed, r in enumerate(runs)
  ]
  return out


def _image_scores(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """``(overall, per_class)``: per seed and test image, the mean foreground Dice over the
  classes present in the image, ``(seeds, N)``, and each class's Dice, ``(seeds, N, C)``;
  NaN where the image holds no such class."""
  dice = np.stack([r["per_image"]["dice"] for r in runs])
  present = np.stack([r["per_image"]["present"] for r in runs])
  per_class = np.where(present, dice, np.nan)
  foreground = per_class[..., 1:] if per_class.shape[-1] > 1 else per_class
  with np.errstate(invalid="ignore"):
    counts = (~np.isnan(foreground)).sum(-1)
    overall = np.where(counts > 0, np.nansum(foreground, -1) / np.maximum(counts, 1), np.nan)
  return overall, per_class


def _dice_diff(comparison: dict) -> dict:
  return {"dice_diff": comparison.pop("diff"), **comparison}


def compare_with_reference(runs: dict[str, list[dict]], *, samples: int, seed: int) -> dict:
  """Each loss paired against ``ce`` on the same test images and seeds; ``{}`` without
  ``ce`` in the study."""
  if REFERENCE not in runs:
    return {}
  names = runs[REFERENCE][0]["per_image"]["name"]
  reference_overall, reference_classes = _image_scores(runs[REFERENCE])
  class_names = list(runs[REFERENCE][0]["summary"]["per_class"])
  out = {}
  for label, label_runs in runs.items():
    if label == REFERENCE:
      continue
    if len(label_runs) != len(runs[REFERENCE]):
      raise ValueError(f"{label} has {len(label_runs)} seeds and ce {len(runs[REFERENCE])}")
    for run in label_runs:
      if not np.array_equal(run["per_image"]["name"], names):
        raise ValueError(
          f"{run['workdir']}: its test images differ from ce's; the paired "
          "comparison needs the same images in the same order"
        )
    overall, per_class = _image_scores(label_runs)
    comparison = _dice_diff(
      statistics.paired_difference(overall, reference_overall, samples=samples, seed=seed)
    )
    comparison["per_class"] = {
      name: _dice_diff(
        statistics.paired_difference(
          per_class[..., k], reference_classes[..., k], samples=samples, seed=seed
        )
      )
      for k, name in enumerate(class_names)
    }
    out[label] = comparison
  adjusted = statistics.holm([c["p_value"] for c in out.values()])
  for comparison, p_holm in zip(out.values(), adjusted, strict=True):
    comparison["p_holm"] = p_holm
  return out


def _format(value, digits: int = 4) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _verdict(comparison: dict, p_key: str = "p_value") -> str:
  if comparison["dice_diff"] is None:
    return "no image"
  if comparison[p_key] < ALPHA:
    return "**better**" if comparison["dice_diff"] > 0 else "**worse**"
  return "not significant"


def _steps_cell(row: dict) -> str:
  """``"best / trained"``, means over seeds (± std where the seeds differ)."""

  def text(key):
    if row.get(key) is None:
      return "-"
    spread = row.get(f"{key}_std") or 0
    return f"{row[key]:.0f}" + (f" ± {spread:.0f}" if spread else "")

  return f"{text('best_step')} / {text('steps_trained')}"


def _budget_sentence(report: dict, config: ml_collections.ConfigDict) -> str:
  """Whether the runs stopped early (patience) or trained the whole budget."""
  train = config.base.train
  if not train.get("patience", 0):
    return (
      f"No early stopping (train.patience=0): every run trained all {train.steps} steps; "
      "the checkpoint tested is the one with the best validation Dice."
    )
  runs = [run for row in report["losses"].values() for run in row["runs"]]
  stopped = sum(bool(run.get("stopped_early")) for run in runs)
  return (
    f"Early stopping: a run ended after {train.patience} validations in a row (every "
    f"{train.eval_every} steps) without a validation Dice gain above {train.min_delta:g}, or "
    f"at {train.steps} steps; {stopped} of {len(runs)} test runs stopped early, "
    f"{len(runs) - stopped} used the full budget. The learning-rate schedule "
    f"({config.base.optimizer.schedule}) runs over the {train.steps}-step maximum."
  )


def _distance_unit(report: dict) -> str:
  units = {row.get("distance_unit", "px") for row in report["losses"].values()}
  return "mm" if units == {"mm"} else "pixels"


def _markdown(report: dict, config: ml_collections.ConfigDict) -> str:
  base, losses = config.base, list(report["losses"])
  patience = base.train.get("patience", 0)
  budget = (
    f"at most {base.train.steps} steps (early stopping, patience {patience})"
    if patience
    else f"{base.train.steps} steps"
  )
  lines = [
    f"# Region-size bias study: {base.data.name}",
    "",
    f"{config.seeds} seed(s) per loss, {budget}, batch "
    f"{base.train.batch_size}, U-Net depth {base.model.depth} / {base.model.features} "
    "features. Test split, the masks as predicted (before any post-processing); Dice, IoU, "
    "HD95 and NSD are means over the images that hold a class (MONAI `ignore_empty`, "
    f"nnU-Net), then over the foreground classes; distances in {_distance_unit(report)}; "
    "mean ± std over seeds; **bold** = best of the column (closest to 0 for the bias).",
    "",
  ]
  if report["tuning"]:
    lines += [
      "## Settings, chosen on the validation split",
      "",
      f"Seed {config.tune.seed}, the test split never opened; weights "
      f"{tuple(config.tune.weights)}, temperatures {tuple(config.tune.temperatures)} "
      "for the region terms (the authors' published CE+L1 setting is weight 1.0, "
      "temperature 10). Validation Dice per setting; the chosen one in bold.",
      "",
      "| loss | weight | temperature | validation Dice | steps (best / trained) |",
      "|---|---|---|---|---|",
    ]
    for label, tuned in report["tuning"].items():
      for point in tuned["grid"]:
        chosen = (point["weight"], point["temperature"]) == (
          tuned["chosen"]["weight"],
          tuned["chosen"]["temperature"],
        )
        cells = [
          str(point["weight"]),
          str(point["temperature"] or "-"),
          _format(point["val_dice"]),
          _steps_cell(point),
        ]
        if chosen:
          cells = [f"**{c}**" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += [
    "## Test metrics",
    "",
    "| loss | setting | " + " | ".join(METRICS) + " | steps (best / trained) |",
    "|---" * (len(METRICS) + 3) + "|",
  ]
  best = {}
  for key in METRICS:
    values = [
      report["losses"][label][key] for label in losses if report["losses"][label][key] is not None
    ]
    best[key] = BETTER[key](values) if values else None
  for label in losses:
    row = report["losses"][label]
    cells = []
    for key in METRICS:
      text = f"{_format(row[key])} ± {_format(row[key + '_std'])}" if row[key] is not None else "-"
      cells.append(f"**{text}**" if row[key] is not None and row[key] == best[key] else text)
    setting = row.get("setting")
    setting_text = f"w={setting['weight']}, T={setting['temperature'] or '-'}" if setting else "-"
    lines.append(f"| {label} | {setting_text} | " + " | ".join(cells) + f" | {_steps_cell(row)} |")
  classes = list(report["losses"][losses[0]]["per_class"])
  lines += [
    "",
    _budget_sentence(report, config),
    "",
    "Dice per class (images holding the class; mean over seeds):",
    "",
    "| loss | " + " | ".join(classes) + " |",
    "|---" * (len(classes) + 1) + "|",
  ]
  for label in losses:
    per_class = report["losses"][label]["per_class"]
    lines.append(
      f"| {label} | " + " | ".join(_format(per_class[c]["dice"]) for c in classes) + " |"
    )
  compared = {label: row["vs_ce"] for label, row in report["losses"].items() if "vs_ce" in row}
  if compared:
    lines += [
      "",
      "## Paired against `ce`",
      "",
      "Per test image, the Dice averaged over the foreground classes it holds; the "
      "difference to `ce` averaged over seeds, then over images. 95% interval: "
      f"paired bootstrap over images ({config.bootstrap_samples} resamples); p: "
      "two-sided Wilcoxon signed-rank test over images; p (Holm): adjusted over the "
      f"{len(compared)} comparisons. Significant means p (Holm) < {ALPHA}.",
      "",
      "| loss | Dice − ce | 95% interval | p | p (Holm) | images | reading |",
      "|---|---|---|---|---|---|---|",
    ]
    for label, c in compared.items():
      interval = "-" if c["ci95"] is None else f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
      diff = "-" if c["dice_diff"] is None else f"{c['dice_diff']:+.4f}"
      lines.append(
        f"| {label} | {diff} | {interval} | {c['p_value']:.3g} | "
        f"{c['p_holm']:.3g} | {c['n']} | {_verdict(c, 'p_holm')} |"
      )
    not_significant = [
      label for label, c in compared.items() if c["dice_diff"] is not None and c["p_holm"] >= ALPHA
    ]
    if not_significant:
      lines += [
        "",
        "Not significant (p (Holm) >= 0.05), i.e. no evidence here that they "
        f"differ from `ce`: {', '.join(f'`{n}`' for n in not_significant)}.",
      ]
    lines += [
      "",
      "Per class (images holding the class; p unadjusted):",
      "",
      "| loss | class | Dice − ce | 95% interval | p | images |",
      "|---|---|---|---|---|---|",
    ]
    for label, c in compared.items():
      for name, k in c["per_class"].items():
        if k["dice_diff"] is None:
          continue
        lines.append(
          f"| {label} | {name} | {k['dice_diff']:+.4f} | [{k['ci95'][0]:+.4f}, "
          f"{k['ci95'][1]:+.4f}] | {k['p_value']:.3g} | {k['n']} |"
        )
  lines += ["", "Figures: " + ", ".join(f"`{p}`" for p in report["figures"].values()), ""]
  return "\n".join(lines)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Tunes on validation, trains every loss with every seed, writes the report."""
  if config.seeds < 1:
    raise user_errors.ConfigError(f"config.seeds must be >= 1, got {config.seeds}")
  if not config.losses:
    raise user_errors.ConfigError("config.losses is empty; name at least one loss")
  # Every config, tuning points included, is checked before the first run starts.
  for spec in config.losses:
    for setting in tuning_grid(spec, config.tune) or [{}]:
      loop.config_checks.check_config(
        run_config(config.base, spec, 0, **_setting_overrides(setting))
      )
  tuned = tune(config, workdir)

  runs: dict[str, list[dict]] = {}
  for spec in config.losses:
    chosen = tuned.get(spec, {}).get("chosen", {})
    for seed in range(config.seeds):
      run = run_config(config.base, spec, seed, **_setting_overrides(chosen))
      run_dir = os.path.join(workdir, "runs", _slug(spec), f"seed_{seed}")
      logging.info("study: %s seed %d -> %s", spec, seed, run_dir)
      loop.train_and_evaluate(run, run_dir)
      runs.setdefault(spec, []).append(_read_run(run_dir))

  report = {
    "losses": {spec: aggregate(spec_runs) for spec, spec_runs in runs.items()},
    "tuning": tuned,
  }
  for spec in runs:
    if spec in tuned:
      report["losses"][spec]["setting"] = tuned[spec]["chosen"]
  for label, comparison in compare_with_reference(
    runs, samples=config.bootstrap_samples, seed=0
  ).items():
    report["losses"][label]["vs_ce"] = comparison
  report["figures"] = figures.write_all(os.path.join(workdir, "figures"), runs, tuned)
  write_errors.write_json(
    os.path.join(workdir, "report.json"), report, what="the report", workdir=workdir
  )
  markdown = os.path.join(workdir, "report.md")
  with write_errors.writing(markdown, "the report", workdir=workdir):
    with open(markdown + ".tmp", "w") as f:
      f.write(_markdown(report, config))
    os.replace(markdown + ".tmp", markdown)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()
  parallel.split_cpu(_CONFIG.value.base.parallel.cpu_devices)
  run_log.log_to_workdir(_WORKDIR.value)
  with preemption.listening():
    run_study(_CONFIG.value, _WORKDIR.value)
  with open(os.path.join(_WORKDIR.value, "report.md")) as f:
    print(f.read())


if __name__ == "__main__":
  user_errors.run(
    main, failures=(loop.Diverged, loop.OutOfMemory), flags_parser=cli.flags_parser(FIELDS_FILE)
  )
