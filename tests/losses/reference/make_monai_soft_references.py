"""Writes ``soft_reference.json`` + ``soft_reference.npz``: MONAI's soft-label Dice family.

Expected values and gradients of MONAI 1.6.1's ``DiceLoss``, ``TverskyLoss`` and
``GeneralizedDiceLoss`` with ``soft_label=True`` (the semimetric form of Wang & Blaschko,
MICCAI 2023, arXiv:2303.16296) on float soft targets, computed in float64 from float32
inputs. PyTorch and MONAI are never project dependencies: run this in a throwaway venv::

    python3 -m venv /tmp/monai_env
    /tmp/monai_env/bin/pip install torch monai==1.6.1 numpy   # a CPU torch wheel will do
    /tmp/monai_env/bin/python tests/losses/reference/make_monai_soft_references.py

It overwrites the two files beside this script; ``tests/losses/test_soft_reference.py``
checks the project's losses against them (see ``README.md`` in this folder).
"""

import itertools
import json
import pathlib

import monai
import numpy as np
import torch
from monai.losses import DiceLoss, GeneralizedDiceLoss, TverskyLoss

HERE = pathlib.Path(__file__).parent
# (case, mode, shape (B, *spatial), channels, seed)
CASES = [
  ("soft2d_multiclass", "multiclass", (2, 6, 5), 3, 0),
  ("soft3d_multiclass", "multiclass", (2, 3, 4, 5), 4, 1),
  ("soft2d_binary", "binary", (3, 6, 5), 1, 2),
  ("soft3d_binary", "binary", (2, 3, 4, 5), 1, 3),
  ("soft2d_multilabel", "multilabel", (2, 6, 5), 3, 4),
]


def _inputs(mode, shape, channels, seed):
  """Channel-last float32 logits and soft targets; some target pixels are exactly one-hot."""
  rng = np.random.default_rng(seed)
  logits = (2.0 * rng.standard_normal(shape + (channels,))).astype(np.float32)
  raw = 2.0 * rng.standard_normal(shape + (channels,))
  if mode == "multiclass":
    targets = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    hard = rng.random(shape) < 0.25
    targets[hard] = np.eye(channels)[rng.integers(0, channels, int(hard.sum()))]
  else:
    targets = 1.0 / (1.0 + np.exp(-raw))
    hard = rng.random(shape + (channels,)) < 0.25
    targets[hard] = rng.integers(0, 2, int(hard.sum()))
  return logits, targets.astype(np.float32)


def _calls(mode):
  """``(reference, MONAI loss, make_loss call)`` for the option combinations of ``mode``."""
  activation = {"softmax": True} if mode == "multiclass" else {"sigmoid": True}
  backgrounds = (True, False) if mode == "multiclass" else (True,)
  out = []
  for bg, squared, jaccard, batch in itertools.product(
    backgrounds, (False, True), (False, True), (False, True)
  ):
    options = dict(include_background=bg, squared_pred=squared, jaccard=jaccard, batch=batch)
    call = dict(name="dice", include_background=bg, squared=squared, jaccard=jaccard, batch=batch)
    out.append(
      (f"monai:DiceLoss({options})", DiceLoss(soft_label=True, **activation, **options), call)
    )
  for (alpha, beta), bg, batch in itertools.product(
    ((0.3, 0.7), (0.5, 0.5), (0.8, 0.2)), backgrounds, (False, True)
  ):
    options = dict(alpha=alpha, beta=beta, include_background=bg, batch=batch)
    call = dict(name="tversky", **options)
    out.append(
      (f"monai:TverskyLoss({options})", TverskyLoss(soft_label=True, **activation, **options), call)
    )
  for bg, batch in itertools.product(backgrounds, (False, True)):
    options = dict(include_background=bg, batch=batch)
    out.append(
      (
        f"monai:GeneralizedDiceLoss({options})",
        GeneralizedDiceLoss(soft_label=True, **activation, **options),
        dict(name="generalized_dice", **options),
      )
    )
  return out


def main():
  assert monai.__version__.startswith("1.6"), monai.__version__
  torch.set_default_dtype(torch.float64)
  arrays, cases = {}, []
  for case, mode, shape, channels, seed in CASES:
    logits, targets = _inputs(mode, shape, channels, seed)
    arrays[f"{case}.logits"], arrays[f"{case}.targets"] = logits, targets
    results = []
    for index, (reference, loss_fn, call) in enumerate(_calls(mode)):
      # MONAI is channel-first: (B, C, *spatial).
      x = torch.tensor(np.moveaxis(logits, -1, 1), dtype=torch.float64, requires_grad=True)
      y = torch.tensor(np.moveaxis(targets, -1, 1), dtype=torch.float64)
      value = loss_fn(x, y)
      value.backward()
      grad_key = f"{case}.{index:02d}.grad"
      arrays[grad_key] = np.moveaxis(x.grad.numpy(), 1, -1)
      results.append(
        {
          "reference": reference,
          "call": {"mode": mode, **call},
          "value": float(value.detach()),
          "grad_key": grad_key,
        }
      )
    cases.append({"case": case, "mode": mode, "spatial_dims": len(shape) - 1, "results": results})
  np.savez_compressed(HERE / "soft_reference.npz", **arrays)
  meta = {
    "generator": "make_monai_soft_references.py",
    "monai": monai.__version__,
    "torch": torch.__version__,
    "cases": cases,
  }
  (HERE / "soft_reference.json").write_text(json.dumps(meta, indent=1) + "\n")
  print(f"{sum(len(c['results']) for c in cases)} results in {len(cases)} cases")


if __name__ == "__main__":
  main()
