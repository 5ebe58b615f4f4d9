"""Service fixtures: one tiny random-init CLIP on disk and a three-domain store, shared per session."""

from __future__ import annotations

import pytest

from .serving import TinyModel, make_store, make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def tiny_store(tiny_model, tmp_path_factory):
    """photo and sketch share a prompt shape; comic has other token counts (its own sub-batch)."""
    return make_store(tmp_path_factory.mktemp("store") / "prompts_store", tiny_model.clip,
                      tokens={"photo": (2, 2), "sketch": (2, 2), "comic": (1, 4)})
