"""Review store fixtures: a store per test on SQLite (a temp file) and on PostgreSQL (a throwaway cluster)."""

from __future__ import annotations

import pytest

from review import ReviewStore

from . import postgres


@pytest.fixture(scope="session")
def pg_server():
    with postgres.cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite3'}"
    return postgres.fresh_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def store(store_url):
    s = ReviewStore(store_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tests.service.serving import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model"))
