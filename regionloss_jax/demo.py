"""``make demo`` until the training program lands: the losses and their size terms on one example.

Prints, for a prediction that over-segments a small object, each loss's value and the
region-size view (ground-truth vs predicted proportions, log-Dice and CE decompositions).
"""

import jax.numpy as jnp
import numpy as np

from regionloss_jax import losses


def main() -> None:
  labels = np.zeros((1, 32, 32), np.int32)
  labels[0, 4:24, 4:24] = 1  # a large region
  labels[0, 26:29, 26:29] = 2  # a tiny one
  logits = 4.0 * (np.eye(3)[labels] * 2 - 1)
  logits[0, 22:30, 22:30, 2] += 6.0  # over-segment the tiny class
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
  print(f"{'loss':<18}{'value':>10}  terms")
  for name in ("ce", "dice", "ce+dice", "ce+l1", "ce+kl", "ce+db", "focal", "tversky"):
    value, terms = losses.make_loss(name)(logits, labels)
    shown = ", ".join(f"{k}={float(v):.4f}" for k, v in terms.items())
    print(f"{name:<18}{float(value):>10.4f}  {shown}")
  tau, tauhat = losses.region_proportions(logits, labels)
  print("ground-truth proportions:", np.round(np.asarray(tau[0]), 4))
  print("predicted proportions:   ", np.round(np.asarray(tauhat[0]), 4))
  parts = losses.log_dice_decomposition(logits, labels)
  print("log-Dice = matching + size - log 2, per class:")
  for key in ("log_dice", "matching", "size"):
    print(f"  {key:<9}", np.round(np.asarray(parts[key][0]), 4))


if __name__ == "__main__":
  main()
