"""The worked examples in docstrings are tests too: run them."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "pixelreasoner.rl.reward",
    "pixelreasoner.rl.algorithm",
    "pixelreasoner.eval.harness",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
