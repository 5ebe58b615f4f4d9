"""One APIRouter per concern; `service.main` assembles them."""
