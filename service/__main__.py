"""`python -m service`: serve the app under uvicorn with the MODERATION_* settings.

SIGTERM: /readyz turns 503 at once; after MODERATION_DRAIN_DELAY_S (time for a load balancer to
notice) uvicorn stops accepting connections, in-flight requests finish (at most
MODERATION_DRAIN_TIMEOUT_S), the lifespan drains the batching queue, and the process exits.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import FrameType

import uvicorn

from .main import create_app
from .settings import get_settings
from .state import ServiceState

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        st, delay = self.state, self.state.settings.drain_delay_s
        first = not st.draining
        st.draining, st.ready = True, False
        if first:
            log.info("signal %d: draining (readyz 503); closing in %.1f s", sig, delay)
        if first and delay > 0:
            threading.Timer(delay, uvicorn.Server.handle_exit, args=(self, sig, None)).start()
        else:
            super().handle_exit(sig, frame)


def _short_startup_failure(record: logging.LogRecord) -> bool:
    """Starlette hands uvicorn the whole traceback of a failed lifespan startup; our startup errors
    (model not loadable, ...) were already logged with what to fix, so keep only the last line."""
    msg = record.msg
    if isinstance(msg, str) and msg.startswith("Traceback") and "startup failed:" in msg:
        record.msg, record.args = msg.strip().splitlines()[-1], ()
    return True


def main() -> None:
    settings = get_settings()
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").addFilter(_short_startup_failure)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            access_log=settings.access_log, timeout_graceful_shutdown=int(settings.drain_timeout_s),
                            proxy_headers=False)
    server = DrainingServer(config, app.state.service)
    server.run()
    if not server.started:
        sys.exit(3)  # startup failed (the log says why), as `uvicorn` itself exits


if __name__ == "__main__":
    main()
