"""Command-line handling of plan/apply that needs no cluster: names, phases, saved plans."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cli._common import is_plan_file, phase_number
from reconciler.errors import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_cluster_name_is_a_usage_error_naming_the_clusters(capsys):
    spec = ROOT / "specs" / "fleet-with-defaults.yaml"
    assert main(["plan", str(spec), "--cluster", "no-such-cluster"]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "no-such-cluster" in error and str(spec) in error


@pytest.mark.parametrize("value, number", [("2", 2), ("trust-both", 2), ("reissue", 3), ("distrust-old", 4)])
def test_until_takes_a_phase_number_or_name(value, number):
    assert phase_number(value) == number


def test_until_rejects_an_unknown_phase():
    with pytest.raises(argparse.ArgumentTypeError, match="trust-both"):
        phase_number("halfway")


def test_a_plan_file_is_told_from_a_spec_by_its_content(tmp_path):
    plan, spec = tmp_path / "p", tmp_path / "s"
    plan.write_text('  {"format_version": 1}')
    spec.write_text("apiVersion: careconcile.dev/v1alpha1\n")
    assert is_plan_file(plan) and not is_plan_file(spec) and not is_plan_file(tmp_path / "missing")


def test_show_of_a_broken_plan_file_names_it(tmp_path, capsys):
    broken = tmp_path / "broken.plan.json"
    broken.write_text('{"format_version": 7}')
    assert main(["show", str(broken)]) == 1
    assert str(broken) in capsys.readouterr().err
