"""The tutorials of docs/tutorials run as they are written, so that they cannot go stale."""

import pathlib
import sys

import pytest

from tests import tiers

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "docs"))
import run_tutorials  # noqa: E402  (docs/ is not a package)

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.md"))


def test_the_three_tutorials_are_there():
  assert [p.stem[:2] for p in TUTORIALS] == ["01", "02", "03"]


@tiers.SLOW
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_and_every_block_prints(path, tmp_path):
  page = run_tutorials.run(path, tmp_path)
  # Every python or sh block is followed by its output on the rendered page.
  assert page.count("```text") == len(run_tutorials.blocks(path.read_text()))


def test_a_failing_block_names_the_tutorial_and_the_block(tmp_path):
  bad = tmp_path / "99_bad.md"
  bad.write_text("# Bad\n\n```python\nprint('ok')\n```\n\n```sh\nexit 3\n```\n")
  with pytest.raises(run_tutorials.TutorialFailed, match=r"99_bad.md, block 2:\nexit 3"):
    run_tutorials.run(bad, tmp_path / "work")
