"""XLA flags the train program sets before JAX opens a backend.

XLA:CPU (jaxlib 0.10) hands large convolutions to YNNPACK. For a U-Net's training step that is
a loss: the kernel gradients (convolutions that contract the batch and spatial axes) run
several times slower there than on XLA's own Eigen path. On the project's 2-core CPU, two
pairs of timings of the default jitted train step gave 620 and 608 ms with YNNPACK
convolutions, 482 and 477 ms without (benchmarks/RESULTS.md has the rest). Only
convolutions leave YNNPACK; its dots and elementwise fusions stay. The flags touch only the
CPU backend, so GPU and TPU runs are unchanged.

A flag the user already put in ``XLA_FLAGS`` wins: e.g.
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` keeps YNNPACK's
convolutions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# name -> value; "-x" removes x from XLA's default list.
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}


def names(environ: Mapping[str, str] = os.environ) -> set[str]:
  """The flag names set in ``environ["XLA_FLAGS"]`` (``--name=value`` or ``--name``)."""
  return {flag.lstrip("-").split("=", 1)[0] for flag in environ.get("XLA_FLAGS", "").split()}


def set_defaults(environ: MutableMapping[str, str] = os.environ) -> str:
  """Adds each of :data:`CPU_FLAGS` to ``environ["XLA_FLAGS"]`` unless it is already there.

  XLA reads the variable once, when JAX opens its first backend: call this before the first
  computation or device query (importing jax is fine). Returns the resulting ``XLA_FLAGS``.
  """
  present = names(environ)
  flags = environ.get("XLA_FLAGS", "").split()
  flags += [f"--{name}={value}" for name, value in CPU_FLAGS.items() if name not in present]
  environ["XLA_FLAGS"] = " ".join(flags)
  return environ["XLA_FLAGS"]
