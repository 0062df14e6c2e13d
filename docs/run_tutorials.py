"""Runs the tutorials in docs/tutorials/ and writes them, with their outputs, as pages.

``python docs/run_tutorials.py [--out build/docs/tutorials] [--workdir DIR] [NAME ...]``

Each tutorial is a Markdown file whose fenced ``python`` and ``sh`` blocks are executed in
order, as a reader would run them from the repository root: ``python`` blocks in one
namespace per tutorial, ``sh`` blocks in bash with this interpreter first on ``PATH``. The
working directory is a scratch folder (``--workdir``, default a temporary one) holding a
link to the repository's ``train/`` and its own dataset cache, so nothing outside it is
written. The page gets each block's output below it. A block that fails stops the run with
its code and error: the tests run every tutorial this way (tests/test_tutorials.py), so a
tutorial cannot drift from the code it shows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import traceback

REPO = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "docs" / "tutorials"
# ```python or ```sh, then the code, then ``` on a line of its own.
BLOCK = re.compile(r"^```(python|sh)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
MAX_OUTPUT_LINES = 40


class TutorialFailed(RuntimeError):
  """A block of a tutorial failed; the message shows the block and the error."""


@dataclasses.dataclass
class Block:
  language: str
  code: str
  start: int  # offsets of the whole fenced block in the tutorial's text
  end: int
  output: str = ""


def blocks(text: str) -> list[Block]:
  return [Block(m.group(1), m.group(2), m.start(), m.end()) for m in BLOCK.finditer(text)]


def _environment(workdir: pathlib.Path) -> dict:
  env = dict(os.environ)
  env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  env["REGIONLOSS_JAX_CACHE"] = str(workdir / "cache")
  return env


def _shortened(text: str) -> str:
  lines = text.rstrip().splitlines()
  if len(lines) > MAX_OUTPUT_LINES:
    skipped = len(lines) - MAX_OUTPUT_LINES
    lines = [f"[... {skipped} lines above ...]"] + lines[-MAX_OUTPUT_LINES:]
  return "\n".join(lines)


def _run_python(block: Block, namespace: dict) -> str:
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      exec(compile(block.code, "<tutorial block>", "exec"), namespace)  # noqa: S102
  except Exception:  # noqa: BLE001  (any error of the block is the tutorial's failure)
    raise TutorialFailed(f"{block.code}\n{out.getvalue()}\n{traceback.format_exc()}") from None
  return out.getvalue()


def _run_sh(block: Block, env: dict, workdir: pathlib.Path) -> str:
  result = subprocess.run(
    ["bash", "-e", "-o", "pipefail", "-c", block.code],
    cwd=workdir,
    env=env,
    capture_output=True,
    text=True,
  )
  if result.returncode:
    raise TutorialFailed(
      f"{block.code}\nexit status {result.returncode}\n{result.stdout[-3000:]}\n"
      f"{result.stderr[-6000:]}"
    )
  return result.stdout


def run(path: pathlib.Path, workdir: pathlib.Path) -> str:
  """Executes the tutorial at ``path`` in ``workdir``; returns its Markdown with outputs."""
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "train").exists():
    (workdir / "train").symlink_to(REPO / "train")
  text = path.read_text()
  env = _environment(workdir)
  namespace: dict = {"__name__": "__tutorial__"}
  previous = os.getcwd()
  os.chdir(workdir)  # python blocks see the same relative paths as sh blocks
  try:
    found = blocks(text)
    for number, block in enumerate(found, 1):
      try:
        if block.language == "python":
          block.output = _run_python(block, namespace)
        else:
          block.output = _run_sh(block, env, workdir)
      except TutorialFailed as error:
        raise TutorialFailed(f"{path.name}, block {number}:\n{error}") from None
  finally:
    os.chdir(previous)
  pieces, last = [], 0
  for block in found:
    pieces.append(text[last : block.end])
    if block.output.strip():
      pieces.append(f"\n\n```text\n{_shortened(block.output)}\n```")
    last = block.end
  pieces.append(text[last:])
  return "".join(pieces)


def _html(markdown: str, title: str) -> str:
  try:
    import markdown2  # pdoc's own Markdown renderer, installed with the docs extra
  except ModuleNotFoundError:
    body = f"<pre>{html.escape(markdown)}</pre>"
  else:
    body = markdown2.markdown(markdown, extras=["fenced-code-blocks", "tables"])
  return (
    f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
    "<style>body{max-width:52em;margin:2em auto;font-family:sans-serif;line-height:1.45}"
    "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}</style>\n" + body
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="tutorial file names (default: all)")
  parser.add_argument("--out", default=str(REPO / "build" / "docs" / "tutorials"))
  parser.add_argument("--workdir", default=None, help="scratch folder (default: temporary)")
  args = parser.parse_args(argv)
  paths = sorted(TUTORIALS.glob("*.md"))
  if args.names:
    paths = [p for p in paths if p.name in args.names or p.stem in args.names]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    root = pathlib.Path(args.workdir or scratch)
    index = []
    for path in paths:
      print(f"running {path.name}", flush=True)
      page = run(path, root / path.stem)
      (out / path.name).write_text(page)
      title = page.splitlines()[0].lstrip("# ").strip()
      (out / f"{path.stem}.html").write_text(_html(page, title))
      index.append(f"- [{title}]({path.stem}.html)")
  listing = "# Tutorials\n\n" + "\n".join(index) + "\n"
  (out / "index.html").write_text(_html(listing, "Tutorials"))
  print(f"{len(paths)} tutorial(s) written to {out}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except TutorialFailed as failure:
    print(f"error: tutorial failed: {failure}", file=sys.stderr)
    sys.exit(1)
