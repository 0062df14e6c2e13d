"""The fast tier: ``make test-fast`` runs the tests not marked ``slow``; ``make test`` runs all.

A test is slow when it trains, runs a program as a subprocess or compiles many variants.
The large parametrized families (every loss in every mode, the soft-label references) keep one
case in ``fast_every`` in the fast tier, spread over the family, so that it still touches
every loss and mode family at small sizes while the full suite checks them all. The
reference values keep every entry of a few cases instead (``FAST_CASES`` in
``tests/losses/test_reference.py``): one compilation serves a whole case. ``make test-fast``
also compiles with XLA's optimisations off (the Makefile says why); the tolerances hold
either way.
"""

from __future__ import annotations

import pytest

SLOW = pytest.mark.slow


def parametrize(argnames: str, cases, *, fast_every: int, ids=None, **kwargs):
  """``pytest.mark.parametrize`` whose cases ``1..fast_every-1`` (mod ``fast_every``) are
  marked slow; ``cases`` as ``pytest.mark.parametrize`` takes them (tuples for several
  argument names, ``pytest.param`` objects kept with their own marks and id)."""
  several = len([n for n in argnames.split(",") if n.strip()]) > 1
  marked = []
  for index, case in enumerate(cases):
    if index % fast_every == 0:
      marked.append(case)
    elif isinstance(case, type(pytest.param(None))):
      marked.append(pytest.param(*case.values, marks=[*case.marks, SLOW], id=case.id))
    else:
      values = tuple(case) if several else (case,)
      marked.append(pytest.param(*values, marks=SLOW))
  return pytest.mark.parametrize(argnames, marked, ids=ids, **kwargs)
