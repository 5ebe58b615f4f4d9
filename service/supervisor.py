"""The multi-process layout: N front-end processes before one engine process (MODERATION_WORKERS > 1).

`python -m service` becomes this supervisor. It starts the engine (service.engine_server),
then N front ends (service.frontend) sharing the port, and watches them:

* SIGTERM / SIGINT: the front ends drain (readyz 503, MODERATION_DRAIN_DELAY_S, in-flight
  requests answered), then the engine drains and stops; exit 0.
* The engine process dies: the front ends answer 503 `engine_unavailable` at once (they watch
  its pid) and /readyz turns 503; the supervisor stops them and exits 1, so that whatever runs
  the service (systemd, Kubernetes, podman's restart policy) starts it again.
* A front end dies: everything stops, exit 1.

Children run in their own sessions (a Ctrl-C reaches the supervisor only, which keeps the order
above) and die with the supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("service")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):  # not Linux: the children outlive a killed supervisor
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(module: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)


def _stop(procs: list[subprocess.Popen], timeout_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", p.pid, timeout_s)
            p.kill()
            p.wait()


class Supervisor:
    def __init__(self, settings, workers: int):
        self.settings, self.workers = settings, workers
        self.stopping = False

    def _signal(self, sig: int, frame) -> None:
        if not self.stopping:
            log.info("signal %d: draining the front ends, then the engine", sig)
        self.stopping = True

    def run(self) -> int:
        runtime = Path(tempfile.mkdtemp(prefix="moderation-"))
        (runtime / "metrics").mkdir()
        env = dict(os.environ, MODERATION_IPC_DIR=str(runtime), PROMETHEUS_MULTIPROC_DIR=str(runtime / "metrics"))
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        try:
            engine = _spawn("service.engine_server", env)
            env["MODERATION_ENGINE_PID"] = str(engine.pid)
            fronts = [_spawn("service.frontend", env) for _ in range(self.workers)]
            log.info("engine pid %d, %d front end(s) %s on %s:%d", engine.pid, len(fronts), [p.pid for p in fronts],
                     self.settings.host, self.settings.port)
            return self._watch(engine, fronts)
        finally:
            shutil.rmtree(runtime, ignore_errors=True)

    def _watch(self, engine: subprocess.Popen, fronts: list[subprocess.Popen]) -> int:
        s = self.settings
        drain_s = s.drain_delay_s + s.drain_timeout_s + 10.0
        while not self.stopping:
            time.sleep(0.05)
            if engine.poll() is not None:
                code = engine.returncode
                log.error("the engine process exited (code %s); stopping the front ends and exiting", code)
                _stop(fronts, drain_s)
                return code if code == 3 else 1  # 3: startup failed, as in one process
            dead = [p for p in fronts if p.poll() is not None]
            if dead:
                log.error("front end pid %d exited (code %s); stopping the service", dead[0].pid, dead[0].returncode)
                _stop(fronts + [engine], drain_s)
                return 1
        _stop(fronts, drain_s)  # in-flight requests finish on the engine, which still serves
        _stop([engine], drain_s)
        log.info("stopped")
        return 0
