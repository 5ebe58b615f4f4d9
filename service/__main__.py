"""`python -m service`: serve the app under uvicorn with the MODERATION_* settings.

`python -m service --help` prints every setting (environment variable, default, meaning, read
from `service.settings.Settings`) and exits without loading the model or binding a port.

SIGTERM: /readyz turns 503 at once; after MODERATION_DRAIN_DELAY_S (time for a load balancer to
notice) uvicorn stops accepting connections, in-flight requests finish (at most
MODERATION_DRAIN_TIMEOUT_S), the lifespan drains the batching queue, and the process exits.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
from types import FrameType

log = logging.getLogger("service")

DESCRIPTION = """Serve the moderation API (uvicorn) with the settings below.

With no settings at all it serves the embedded tiny CLIP and the demo bundles of ./prompts_store
on 127.0.0.1:8000, offline. Settings are environment variables (MODERATION_<NAME>) or lines of a
.env file in the working directory. There are no command-line options besides --help.
API reference: http://HOST:PORT/docs once running; README.md and docs/service.md."""

# Meanings for the few settings whose field carries no description yet (service/settings.py).
_UNDESCRIBED = {"host": "listen address (0.0.0.0 to listen on every interface, as in the container)",
                "port": "listen port", "log_level": "debug | info | warning | error",
                "warmup": "run a warm-up forward pass before /readyz turns 200",
                "access_log": "uvicorn's access log, one line per request"}


_MODULE_NOTE = re.compile(r"\s*\((?:promptclip|service)\.[\w.]+\)")  # "(promptclip.graphs)": for developers


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return str(value)


def settings_help() -> str:
    """Every setting: environment variable, default and meaning, read from the Settings fields."""
    from .settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["settings (environment variable = default: meaning):"]
    for name, field in Settings.model_fields.items():
        meaning = _MODULE_NOTE.sub("", field.description or _UNDESCRIBED.get(name, ""))
        lines.append(f"  {prefix}{name.upper()} = {_default(field)}")
        if meaning:
            lines.append(f"      {meaning}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=DESCRIPTION, epilog=settings_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def draining_server(config, state):
    """A uvicorn.Server whose SIGTERM drains first (uvicorn is imported only when the server runs)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            st, delay = state, state.settings.drain_delay_s
            first = not st.draining
            st.draining, st.ready = True, False
            if first:
                log.info("signal %d: draining (readyz 503); closing in %.1f s", sig, delay)
            if first and delay > 0:
                threading.Timer(delay, uvicorn.Server.handle_exit, args=(self, sig, None)).start()
            else:
                super().handle_exit(sig, frame)

    return DrainingServer(config)


def _short_startup_failure(record: logging.LogRecord) -> bool:
    """Starlette hands uvicorn the whole traceback of a failed lifespan startup; our startup errors
    (model not loadable, ...) were already logged with what to fix, so keep only the last line."""
    msg = record.msg
    if isinstance(msg, str) and msg.startswith("Traceback") and "startup failed:" in msg:
        record.msg, record.args = msg.strip().splitlines()[-1], ()
    return True


def main(argv: list[str] | None = None) -> None:
    parse_args(argv)  # --help prints the settings and exits 0 before anything loads
    from .settings import get_settings

    settings = get_settings()
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.resolved_workers() > 1:  # front ends + one engine process (service.supervisor)
        from .supervisor import Supervisor

        sys.exit(Supervisor(settings, settings.resolved_workers()).run())
    import uvicorn

    from .main import create_app  # torch and the model code: only when the server runs
    logging.getLogger("uvicorn.error").addFilter(_short_startup_failure)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            access_log=settings.access_log, timeout_graceful_shutdown=int(settings.drain_timeout_s),
                            proxy_headers=False)
    server = draining_server(config, app.state.service)
    server.run()
    if not server.started:
        sys.exit(3)  # startup failed (the log says why), as `uvicorn` itself exits


if __name__ == "__main__":
    main()
