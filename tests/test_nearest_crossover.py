"""scripts/nearest_crossover.py times the sampler's two nearest-value paths and fails when they disagree."""

import pytest
import torch
from conftest import load_script as load


def load_script():
    return load("nearest_crossover")


def test_quick_run_times_both_paths_on_each_shape(capsys):
    script = load_script()
    assert script.main(["--quick", "--repeats", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:3] for row in rows] == [[str(n) for n in shape] for shape in script.QUICK_SHAPES]
    assert all(float(row[4]) > 0 and float(row[5]) > 0 and row[6] in ("matrix", "search") for row in rows)


def test_a_search_that_picks_other_positions_fails_the_run(monkeypatch, capsys):
    script = load_script()
    monkeypatch.setattr(torch, "searchsorted", lambda values, points, **_: torch.zeros_like(points, dtype=torch.long))
    assert script.main(["--quick", "--repeats", "1"]) == 1
    assert "different positions" in capsys.readouterr().err


def test_repeats_below_one_are_refused():
    with pytest.raises(SystemExit):
        load_script().main(["--quick", "--repeats", "0"])
