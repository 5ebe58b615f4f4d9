"""Tiny synthetic world + tiny random CLIP shared by the training tests (built once per session)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY
from training import main

DOMAINS = ["photo", "sketch", "pencil", "comic"]
# small everything: per label 8 images -> 4 test, 2 val, 2 training shots
FAST = ["--model", "test-tiny", "--pretrained", "", "--domains", *DOMAINS, "--shots", "2", "--val-per-class", "2",
        "--steps", "6", "--epochs", "3", "--batch-per-task", "4", "--warmup", "2"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    assert main(["synth", "--out", str(out), "--per-class", "8", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def grouped(world, tiny_arch, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["group", "--data", str(world), "--out", str(run), *FAST, "--group-steps", "4",
                 "--group-snapshots", "2", "4"]) == 0
    return run


def train(world, grouped, out, *extra):
    return main(["train", "--data", str(world), "--groups", str(grouped / "groups.json"), "--out", str(out),
                 *FAST, *extra])


@pytest.fixture(scope="session")
def trained(world, grouped, tmp_path_factory):
    """group_private trained on the tiny world with FAST settings (export tests read it, never write it)."""
    run = tmp_path_factory.mktemp("trained")
    assert train(world, grouped, run) == 0
    return run


@pytest.fixture(scope="session")
def tiny_json(tmp_path_factory):
    """The tiny config as a JSON file, for subprocesses (torchrun) that cannot see the fixture."""
    path = tmp_path_factory.mktemp("cfg") / "test-tiny.json"
    path.write_text(json.dumps(TINY))
    return path
