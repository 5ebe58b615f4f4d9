"""`python -m training` help as an operator reads it: fast (no torch), operator options first, advanced
knobs grouped apart, no developer notes; the recalibrate hook; rollback of an unknown domain."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
import types
from dataclasses import fields

import pytest

from tests.service.serving import REPO
from training import cli
from training.cli_options import RECALIBRATE, recalibrate_module
from training.config import DecisionConfig

COMMANDS = ["fit", "synth", "group", "train", "evaluate", "export", "rollback", "router", "label", "pretrain-tiny",
            "demo"] + (["recalibrate"] if recalibrate_module() is not None else [])
PROBE = ("import runpy, sys; sys.argv = ['training', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('training', run_name='__main__', alter_sys=True)\n"
         "except SystemExit as e:\n    code = e.code\n"
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)")


def help_text(*args: str) -> str:
    r = subprocess.run([sys.executable, "-c", PROBE, *args, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.stderr.strip().endswith("NO-TORCH 0"), r.stderr  # --help never imports torch
    return r.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS, "label add"])
def test_help_is_for_operators_and_loads_no_torch(command):
    text = help_text(*(command.split() if command else []))
    assert "issue" not in text.lower() and "main(argv)" not in text and "tests call" not in text
    if command is None:
        assert "python -m training fit --data DATA --out RUN --store STORE" in text


@pytest.mark.parametrize("command", ["fit", "export"])
def test_operator_options_come_before_the_advanced_groups(command):
    text = help_text(command)
    first_advanced = text.index("\nadvanced: ")
    operator = ["--store", "--max-false-flag", "--review-target", "--review-budget", "--scope-keep"]
    if command == "fit":
        operator += ["--data", "--out", "--model", "--pretrained", "--device", "--seed ", "--seeds", "--shots"]
    else:
        operator += ["--run", "--version", "--seed "]
    for opt in operator:
        assert -1 < text.find(f"  {opt}") < first_advanced, opt
    for knob in ("--consistency-kl", "--group-k-rule", "--scope-signals", "--negatives", "--cache-weights"):
        if command == "export" and knob in ("--consistency-kl", "--group-k-rule", "--cache-weights"):
            continue
        assert text.find(f"  {knob}") > first_advanced, knob
    assert re.search(r"\nadvanced: decision rule:", text)
    if any(f.name == "allow_unflaggable" for f in fields(DecisionConfig)):
        i = text.find("  --allow-unflaggable")
        assert -1 < i < first_advanced and "cannot flag at all" in " ".join(text[i:i + 400].split())


def test_recalibrate_runs_the_module_when_it_exists(monkeypatch):
    calls = []
    fake = types.ModuleType(RECALIBRATE)
    fake.__spec__ = importlib.machinery.ModuleSpec(RECALIBRATE, loader=None)
    fake.add_arguments = lambda p: p.add_argument("--reviews", required=True, help="review store URL")
    fake.run = lambda args: calls.append(args.reviews) or 7
    monkeypatch.setitem(sys.modules, RECALIBRATE, fake)
    assert "recalibrate" in cli.build_parser().format_help()
    assert cli.main(["recalibrate", "--reviews", "sqlite:///r.db"]) == 7 and calls == ["sqlite:///r.db"]


def test_without_the_module_there_is_no_recalibrate_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "recalibrate" not in cli.build_parser().format_help()


def test_rollback_of_an_unknown_domain_names_the_known_ones(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(REPO / "prompts_store", store)
    r = subprocess.run([sys.executable, "-m", "training", "rollback", "--store", str(store), "--domain", "nope",
                        "--version", "v0001"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "unknown domain 'nope'" in r.stderr and "'photo'" in r.stderr and "Traceback" not in r.stderr
