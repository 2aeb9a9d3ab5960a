"""The two tiers (tests/conftest.py): every collected test is in exactly one, by the rule, not by a list."""

import sys

import pytest

from conftest import TIERS, ddp_fit, dl4, dl4_here, tier


def test_every_collected_test_is_in_exactly_one_tier(request):
    items = request.session.items  # those this run keeps: with --full, every test collected
    for item in items:
        marks = {m.name for m in item.iter_markers()} & {"fast", "full"}
        assert marks == {TIERS[item.nodeid]}, (item.nodeid, marks)
    if request.config.getoption("--full"):
        assert {item.nodeid for item in items} == set(TIERS), "--full must run every test collected"
    else:
        assert {item.nodeid for item in items} == {n for n, t in TIERS.items() if t == "fast"}


class _Item:
    """A stand-in for a collected test: its function, fixtures and marks."""

    def __init__(self, function, slow=False, fixturenames=()):
        self.function, self.slow, self.fixturenames = function, slow, fixturenames
        self.module = sys.modules[__name__]

    def get_closest_marker(self, name):
        return name == "slow" and self.slow or None


def _in_process(tmp_path, monkeypatch, capsys):
    return dl4_here("fit", cwd=tmp_path, monkeypatch=monkeypatch, capture=capsys)


def _console_script(tmp_path):
    return dl4("fit", cwd=tmp_path)


def _two_processes(tmp_path):
    return ddp_fit("x.yaml", tmp_path, None)


@pytest.fixture
def _a_run_in_another_process(tmp_path):
    return dl4("fit", cwd=tmp_path)


# looked up by name, so that the test below does not itself use what they use
STAND_INS = {"in_process": _in_process, "console_script": _console_script, "two_processes": _two_processes}


def test_the_rule_follows_helpers_into_the_processes_they_start():
    assert tier(_Item(STAND_INS["in_process"])) == "fast"  # dl4's entry point here (it returns a CompletedProcess)
    assert tier(_Item(STAND_INS["console_script"])) == "full"  # conftest.dl4 -> subprocess.run
    assert tier(_Item(STAND_INS["two_processes"])) == "full"  # ddp_fit -> dl4 -> subprocess.run
    assert tier(_Item(STAND_INS["in_process"], slow=True)) == "full"
    assert tier(_Item(STAND_INS["in_process"], fixturenames=["tmp_path", "_a_run_in_another_process"])) == "full"
