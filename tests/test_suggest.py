"""'Did you mean …' for a misspelt name, else the known names."""

from __future__ import annotations

import pytest

from poller.suggest import did_you_mean


@pytest.mark.parametrize(("word", "known", "says"), [
    ("FILED", ["FILLED", "FINAL_FILLED", "EXPIRED"], "; did you mean 'FILLED'?"),
    ("tw-mian", ["tw-main", "crypto"], "; did you mean 'tw-main'?"),
    ("intervall", ["interval", "timeout", "share"], "; did you mean 'interval'?"),
    ("zzz", ["b", "a"], " (known: a, b)"),
    ("zzz", [], ""),
])
def test_the_closest_name_or_the_known_ones(word: str, known: list[str], says: str) -> None:
    assert did_you_mean(word, known) == says


def test_a_long_list_of_known_names_is_cut() -> None:
    names = [f"name{i:02d}" for i in range(20)]
    text = did_you_mean("q", names)
    assert text.startswith(" (known: name00, name01") and text.endswith(", …)")
    assert "name12" not in text
