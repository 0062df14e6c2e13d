"""The XLA flags the train program sets: how they merge with the user's, and that they take
effect when set the way the program sets them (after importing jax and parsing the config)."""

import os
import subprocess
import sys

from tests.train.helpers import REPO
from train import xla_flags

YNN = "xla_cpu_experimental_ynn_fusion_type"
_WITHOUT_XLA_FLAGS = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def test_adds_the_flags_to_an_empty_environment():
  environ = {}
  assert xla_flags.set_defaults(environ) == f"--{YNN}=-individual_convolution"
  assert environ["XLA_FLAGS"] == f"--{YNN}=-individual_convolution"


def test_keeps_the_users_flags_and_their_own_value_of_ours():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  xla_flags.set_defaults(environ)
  assert environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=4",
    f"--{YNN}=-individual_convolution",
  ]
  mine = {"XLA_FLAGS": f"--{YNN}=+individual_convolution"}
  assert xla_flags.set_defaults(mine) == f"--{YNN}=+individual_convolution"


def test_names_are_the_flags_not_their_values():
  environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/xla_force_host_platform_device_count -xla_a --b=1"}
  assert xla_flags.names(environ) == {"xla_dump_to", "xla_a", "b"}
  assert xla_flags.names({}) == set()


def test_is_idempotent():
  environ = {}
  xla_flags.set_defaults(environ)
  assert xla_flags.set_defaults(dict(environ)) == environ["XLA_FLAGS"]


# A fresh interpreter, as `python -m train` starts: its imports and config parsing must not open
# a backend, and flags set afterwards must reach the compiler: no convolution of a U-Net-sized
# kernel gradient is left inside a YNNPACK fusion.
_PROGRAM = r"""
import re, sys
import train.__main__
from absl import flags
flags.FLAGS(["train", "--workdir=unused", "--config=train/configs/default.py"])
from jax._src import xla_bridge
assert not xla_bridge.backends_are_initialized(), "the config or imports opened a backend"
from train import xla_flags
xla_flags.set_defaults()
import jax, jax.numpy as jnp
x, w = jnp.ones((16, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(jax.grad(lambda w: conv(w).sum())).lower(w).compile().as_text()
ynn = set(re.findall(r"calls=(%[\w.-]+)[^\n]*__ynn_fusion", hlo))
bodies = re.split(r"\n\s*\n", hlo)
convs_in_ynn = [b.split()[0] for b in bodies if b.split() and b.split()[0] in ynn
                and " convolution(" in b]
assert " convolution(" in hlo, "no convolution compiled"
assert not convs_in_ynn, convs_in_ynn
print("ok")
"""


def test_flags_set_by_the_program_reach_the_compiler():
  done = subprocess.run(
    [sys.executable, "-c", _PROGRAM],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=_WITHOUT_XLA_FLAGS,
  )
  assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
