"""The review store (DESIGN §13): answers sent to review, reviewers' claims and verdicts, audit estimates.

Imports no service or training code: the service writes to it, training reads verdicts from it.

    from review import ReviewStore
    store = ReviewStore("sqlite:///review.sqlite3")
    store.migrate()
    store.claim("ana", domain="photo", limit=5)
"""

from .schema import LATEST as SCHEMA_VERSION
from .stats import wilson
from .store import OFF, REASONS, NewItem, ReviewError, ReviewStore, normalise_url
from .writer import ReviewWriter

__all__ = ["OFF", "REASONS", "SCHEMA_VERSION", "NewItem", "ReviewError", "ReviewStore", "ReviewWriter",
           "normalise_url", "wilson"]
