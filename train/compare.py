"""``python -m train.compare --config=train/configs/compare.py --workdir=DIR``: the study.

Trains ``config.base`` once per loss in ``config.losses`` and seed in ``range(config.seeds)``
(each run a normal, resumable workdir ``DIR/runs/<loss>/seed_<k>``: same data order per
seed), optionally a weight x temperature sweep of one loss, and writes ``DIR/report.json``,
``DIR/report.md`` and the figures in ``DIR/figures/``.
"""

from __future__ import annotations

import ast
import json
import os
import re

import ml_collections
import numpy as np
from absl import app, flags, logging

from train import cli, loop, parallel, reporting, xla_flags
from train import compare_figures as figures
from train.configs import base as base_config

FIELDS_FILE = "train/configs/compare.py (the study) and train/configs/base.py (base.*)"
_CONFIG = cli.define_config_flag("train/configs/compare.py", "Study configuration file.",
                                 fields_file=FIELDS_FILE)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.", required=True)

ALIASES = {"ce+logdice": ("ce+dice", {"log": True}), "logdice": ("dice", {"log": True})}
METRICS = ("dice", "iou", "hd95", "proportion_mae", "proportion_bias")
# Which direction is better, for marking the best value of each column.
BETTER = {"dice": max, "iou": max, "hd95": min, "proportion_mae": min,
          "proportion_bias": lambda values: min(values, key=abs)}


def parse_loss(spec: str) -> tuple[str, dict]:
  """``"ce+dice(log=True, smooth_nr=0)"`` -> ``("ce+dice", {"log": True, "smooth_nr": 0})``."""
  match = re.fullmatch(r"\s*([\w+]+)\s*(?:\((.*)\))?\s*", spec)
  if not match:
    raise ValueError(f"cannot parse loss {spec!r}; write NAME or NAME(option=value, ...)")
  name, arguments = match.groups()
  name, options = ALIASES.get(name, (name, {}))
  options = dict(options)
  for item in filter(None, (arguments or "").split(",")):
    key, _, value = item.partition("=")
    try:
      options[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise ValueError(f"loss {spec!r}: option {item.strip()!r} needs a Python literal value")
  return name, options


def run_config(base: ml_collections.ConfigDict, spec: str, seed: int,
               **overrides) -> ml_collections.ConfigDict:
  """``base`` with the loss of ``spec``, ``train.seed = seed`` and the loss ``overrides``."""
  name, options = parse_loss(spec)
  config = ml_collections.ConfigDict(base.to_dict())
  config.loss.name = name
  for key, value in {**options, **overrides}.items():
    if key not in config.loss or key == "weight_schedule":
      raise ValueError(f"loss {spec!r}: unknown option {key!r}; valid: "
                       f"{', '.join(['weight', *base_config.LOSS_OPTION_TYPES])}")
    config.loss[key] = value
  config.train.seed = seed
  return config


def _slug(text: str) -> str:
  return re.sub(r"[^\w+.=-]+", "_", text).strip("_")


def _read_run(workdir: str) -> dict:
  with open(os.path.join(workdir, loop.SUMMARY_FILE)) as f:
    summary = json.load(f)["test"]
  per_image = dict(np.load(os.path.join(workdir, loop.PER_IMAGE_FILE)))
  return {"workdir": workdir, "summary": summary, "per_image": per_image,
          "records": reporting.read_metrics(workdir)}


def aggregate(runs: list[dict]) -> dict:
  """Mean and standard deviation over seeds of each summary metric, per class too."""
  out = {}
  for key in METRICS:
    values = np.array([r["summary"][key] for r in runs])
    out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
  classes = runs[0]["summary"]["per_class"]
  out["per_class"] = {
      name: {key: float(np.mean([r["summary"]["per_class"][name][key] for r in runs]))
             for key in METRICS}
      for name in classes}
  out["runs"] = [{"workdir": r["workdir"], "seed": seed,
                  **{key: r["summary"][key] for key in METRICS}}
                 for seed, r in enumerate(runs)]
  return out


def _markdown(report: dict, base: ml_collections.ConfigDict, seeds: int) -> str:
  losses = list(report["losses"])
  lines = [f"# Region-size bias study: {base.data.name}", "",
           f"{seeds} seed(s) per loss, {base.train.steps} steps, batch {base.train.batch_size}, "
           f"U-Net depth {base.model.depth} / {base.model.features} features. Test split, "
           "means over the foreground classes; mean ± std over seeds; **bold** = best of the "
           "column (closest to 0 for the bias).", ""]
  lines += ["| loss | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
  best = {key: BETTER[key]([report["losses"][l][key] for l in losses]) for key in METRICS}
  for label in losses:
    row = report["losses"][label]
    cells = []
    for key in METRICS:
      text = f"{row[key]:.4f} ± {row[key + '_std']:.4f}"
      cells.append(f"**{text}**" if row[key] == best[key] else text)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  classes = list(report["losses"][losses[0]]["per_class"])
  lines += ["", "Dice per class (mean over seeds):", "",
            "| loss | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
  for label in losses:
    per_class = report["losses"][label]["per_class"]
    lines.append(f"| {label} | " + " | ".join(f"{per_class[c]['dice']:.4f}" for c in classes)
                 + " |")
  if "ce" in report["losses"]:
    lines += ["", "Paired comparison against `ce` (same seed, same data order): test Dice "
              "difference per seed, and its mean.", "",
              "| loss | per-seed Dice − ce | mean |", "|---|---|---|"]
    reference = [r["dice"] for r in report["losses"]["ce"]["runs"]]
    for label in losses:
      if label == "ce":
        continue
      diffs = [r["dice"] - c for r, c in zip(report["losses"][label]["runs"], reference)]
      lines.append(f"| {label} | " + ", ".join(f"{d:+.4f}" for d in diffs)
                   + f" | {np.mean(diffs):+.4f} |")
  if report.get("sweep"):
    sweep = report["sweep"]
    lines += ["", f"Sweep of `{sweep['loss']}` (seed 0):", "",
              "| weight | temperature | dice | proportion_mae |", "|---|---|---|---|"]
    for point in sweep["points"]:
      lines.append(f"| {point['weight']} | {point['temperature']} | {point['dice']:.4f} | "
                   f"{point['proportion_mae']:.4f} |")
  lines += ["", "Figures: " + ", ".join(f"`{p}`" for p in report["figures"].values()), ""]
  return "\n".join(lines)


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every run that is not finished yet, then writes the report and figures."""
  if config.seeds < 1:
    raise ValueError(f"config.seeds must be >= 1, got {config.seeds}")
  if not config.losses:
    raise ValueError("config.losses is empty; name at least one loss")
  plans = []  # (label, seed, config)
  for spec in config.losses:
    for seed in range(config.seeds):
      plans.append((spec, seed, run_config(config.base, spec, seed)))
  sweep_plans = []
  for weight in config.sweep.weights:
    for temperature in config.sweep.temperatures or (None,):
      overrides = {"weight": weight}
      if temperature is not None:
        overrides["temperature"] = temperature
      sweep_plans.append((weight, temperature,
                          run_config(config.base, config.sweep.loss, 0, **overrides)))
  for *_, run in plans + sweep_plans:  # every config is checked before the first run starts
    loop.config_checks.check_config(run)

  runs: dict[str, list[dict]] = {}
  for spec, seed, run in plans:
    run_dir = os.path.join(workdir, "runs", _slug(spec), f"seed_{seed}")
    logging.info("study: %s seed %d -> %s", spec, seed, run_dir)
    loop.train_and_evaluate(run, run_dir)
    runs.setdefault(spec, []).append(_read_run(run_dir))
  sweep_points = []
  for weight, temperature, run in sweep_plans:
    run_dir = os.path.join(workdir, "sweep", _slug(f"w={weight}_t={temperature}"))
    loop.train_and_evaluate(run, run_dir)
    summary = _read_run(run_dir)["summary"]
    sweep_points.append({"weight": weight, "temperature": temperature, "workdir": run_dir,
                         **{key: summary[key] for key in METRICS}})

  report = {"losses": {spec: aggregate(spec_runs) for spec, spec_runs in runs.items()}}
  if sweep_points:
    report["sweep"] = {"loss": config.sweep.loss, "points": sweep_points}
  report["figures"] = figures.write_all(os.path.join(workdir, "figures"), runs, sweep_points)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(_markdown(report, config.base, config.seeds))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()
  parallel.split_cpu(_CONFIG.value.base.parallel.cpu_devices)
  reporting.setup_logging()
  run_study(_CONFIG.value, _WORKDIR.value)
  with open(os.path.join(_WORKDIR.value, "report.md")) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(FIELDS_FILE))
