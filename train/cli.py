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


def define_config_flag(default_file: str, help_text: str, *, fields_file: str):
  """``--config`` (default ``default_file``) with ``--config.FIELD=VALUE`` overrides."""
  try:
    # Without --config on the command line, ml_collections loads the default file and
    # applies the overrides right here, at definition, so their errors surface here too.
    return config_flags.DEFINE_config_file("config", default_file, help_text, lock_config=True)
  except (KeyError, AttributeError) as error:
    user_errors.fail(unknown_field_message(sys.argv, error, fields_file))


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
