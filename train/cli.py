"""The command line of the train commands: a config-file flag and flags whose mistakes
end in one line naming the flag, not in a traceback from ml_collections."""

from __future__ import annotations

import re
import sys

from absl import flags
from ml_collections import config_flags

from train import user_errors


def unknown_field_message(argv: list[str], error: Exception, config_file: str) -> str:
  """One line for ml_collections' KeyError/AttributeError on an unknown ``--config.FIELD``."""
  text = str(error).replace("\\'", "'").replace("\\n", "\n")
  quoted = re.search(r"'(\w+)'", text)
  key = quoted.group(1) if quoted else ""
  hint = re.search(r'Did you mean "(\w+)"', text)
  for arg in argv:
    field = arg.split("=", 1)[0].removeprefix("--config.")
    if arg.startswith("--config.") and key in field.split("."):
      path = field[: field.index(key) + len(key)]
      suggestion = f' (did you mean "{hint.group(1)}"?)' if hint else ""
      return (
        f"--config.{field}: the config has no field {path!r}{suggestion}; every field "
        f"is listed in {config_file}."
      )
  return f"a --config field does not exist: {text.splitlines()[0]}"


PLANNED_CONFIG = "train/configs/planned.py"


def plan_argument(argv: list[str]) -> str | None:
  """The value of ``--plan=PATH`` (or ``--plan PATH``) in ``argv``, before flags are parsed."""
  for index, arg in enumerate(argv):
    if arg.startswith("--plan="):
      return arg.split("=", 1)[1]
    if arg == "--plan" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def define_config_flag(
  default_file: str, help_text: str, *, fields_file: str, plan: bool = False
) -> config_flags.FlagHolder:
  """``--config`` (default ``default_file``) with ``--config.FIELD=VALUE`` overrides.

  With ``plan``, also ``--plan=PLAN.json`` (from ``python -m train.plan``): the config is
  then :data:`PLANNED_CONFIG` with that plan, and the overrides apply on top of it.
  """
  if plan:
    flags.DEFINE_string("plan", None, "A plan.json written by python -m train.plan.")
    path = plan_argument(sys.argv)
    if path is not None:
      if any(a == "--config" or a.startswith("--config=") for a in sys.argv):
        user_errors.fail("--plan and --config both choose the config; give one of them.")
      default_file = f"{PLANNED_CONFIG}:{path}"
  try:
    # Without --config on the command line, ml_collections loads the default file and
    # applies the overrides right here, at definition, so their errors surface here too.
    return config_flags.DEFINE_config_file("config", default_file, help_text, lock_config=True)
  except (KeyError, AttributeError) as error:
    user_errors.fail(unknown_field_message(sys.argv, error, fields_file))
  except (ValueError, flags.Error) as error:
    # A plan file that cannot be read (train/configs/planned.py): absl wraps its error in
    # the config file's whole traceback; its last line is what went wrong.
    user_errors.fail(f"--plan: {str(error).strip().splitlines()[-1]}")


def flags_parser(fields_file: str | None = None):
  """A ``flags_parser`` for ``absl.app.run``: flag mistakes end in one line, exit status 2.

  ``fields_file``: the file listing the config's fields, for a command with ``--config``.
  """
  config_errors = (KeyError, AttributeError) if fields_file else ()

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as error:
      # absl's message may span lines ("Did you mean"); the error is still one line.
      text = " ".join(str(error).split())
      user_errors.fail(f"{text}; pass --helpfull to see the flags.")
    except config_errors as error:
      user_errors.fail(unknown_field_message(argv, error, fields_file))

  return parse
