"""The long-running process: config, scheduler, store and web server, with reloads.

Reload (SIGHUP or ``POST /-/reload``) is a transaction: the new config is read,
validated and built (probes, triggers, scheduler) before the running one is
touched.  Any failure on the way (a file that is not UTF-8, bad YAML, a type, a
value, a probe or trigger that cannot be built, even a bug) keeps the old config
running, sets ``certscope_config_last_reload_successful 0`` and logs one line; a
reload never ends the process and never leaves probing stopped.  SIGTERM and SIGINT stop the web
server and the scheduler; a round in flight stops after its current target, then
queued spans are flushed for at most ``tracing.shutdown_timeout``.

While first rounds run (at start and after a reload: a cold inventory, whose every
result is new and kept), the cyclic collector's young generation is collected every
``FIRST_ROUND_GEN0_THRESHOLD`` allocations instead of 700; its settings come back as
they were the moment the daemon is ready (``FirstRoundCollector``).

Tracing is set up once at start from the config's ``tracing`` section and the
``OTEL_*`` variables; a reload that changes the section is logged and takes effect
on restart (like ``web.listen_address``).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from types import FrameType

from exporter.config import (
    EMBEDDED_DEFAULT,
    Config,
    ConfigError,
    default_config,
    load_config,
    split_listen_address,
)
from exporter.multi_target import ProbeRefused, probe_target
from exporter.scheduler import Scheduler
from exporter.store import ResultStore
from exporter.tracing import TracingCollector, setup_tracing
from exporter.web import WebApp, WebServer
from exporter.webconfig import WebConfigError, WebConfigSource
from probes.settings import NO_SHARD, Shard

log = logging.getLogger(__name__)

# SIGTERM ends the process within this, whatever a thread is stuck in (see exit_after).
STOP_GRACE_SECONDS = 8.0

# In a first round every result is new and survives: the young generations fill with
# objects that all live on, and while the heap grows by a quarter a full collection
# follows every 10 young ones, each walking the whole growing heap.  A cold inventory
# of 20,000 files made 452 young and 3 full collections at CPython's 700 (0.25 s, and
# its publishing took 0.1 s longer); at 7,000, 44 and none (docs/performance.md, Files).
FIRST_ROUND_GEN0_THRESHOLD = 7000


class FirstRoundCollector:
    """The collector's gen-0 threshold raised from ``begin()`` (a config is about to be
    applied) until ``end()`` (the daemon is ready), then the thresholds from before.
    Only while first rounds run: in the steady state CPython's own cadence of full
    collections is what keeps cyclic garbage (dropped spans, old configs) in check."""

    def __init__(self, gen0_threshold: int = FIRST_ROUND_GEN0_THRESHOLD) -> None:
        self._gen0_threshold = gen0_threshold
        self._lock = threading.Lock()
        self._saved: tuple[int, int, int] | None = None

    @property
    def raised(self) -> bool:
        return self._saved is not None

    def begin(self) -> None:
        with self._lock:
            if self._saved is None:
                self._saved = gc.get_threshold()
                gen0, gen1, gen2 = self._saved
                gc.set_threshold(max(gen0, self._gen0_threshold), gen1, gen2)

    def end(self) -> None:
        with self._lock:
            if self._saved is not None:
                gc.set_threshold(*self._saved)
                self._saved = None


class Daemon:
    def __init__(
        self,
        config_file: str | None,
        listen_address: str | None = None,
        web_config_file: str | None = None,
        shard: Shard = NO_SHARD,
        enable_lifecycle: bool = False,
    ) -> None:
        self.config_file = config_file
        self.listen_address_flag = listen_address
        self.web_config_flag = web_config_file
        self.store = ResultStore()
        self.shard = shard
        self.scheduler = Scheduler(self.store, shard)
        self.collector = FirstRoundCollector()
        self.scheduler.on_ready = self.collector.end
        self.config: Config | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self.web: WebServer | None = None
        self.enable_lifecycle = enable_lifecycle  # POST /-/reload; SIGHUP reloads regardless

    def load(self) -> Config:
        return load_config(self.config_file) if self.config_file else default_config()

    def reload(self) -> str | None:
        """Load the config again; returns None on success, else the error text.
        Never raises."""
        with self._reload_lock:
            source = self.config_file or EMBEDDED_DEFAULT
            try:
                config = self.load()
                self._apply(config)
            except ConfigError as exc:
                log.error(
                    "config reload failed, the previous config keeps running: %s: %d error(s): %s",
                    exc.source,
                    len(exc.messages),
                    "; ".join(exc.messages),
                )
                self.store.record_reload(False)
                return "\n".join(exc.messages)
            except Exception as exc:  # whatever it is, the old config goes on
                message = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error(
                    "config reload failed, the previous config keeps running: %s: %s", source, message, exc_info=True
                )
                self.store.record_reload(False)
                return message
            if self.config and config.web.listen_address != self.config.web.listen_address:
                log.warning("web.listen_address changed; it takes effect on restart")
            if self.config and config.tracing != self.config.tracing:
                log.warning("the tracing section changed; it takes effect on restart")
            if self.config and config.web.config_file != self.config.web.config_file:
                log.warning("web.config_file changed; it takes effect on restart (its content reloads by itself)")
            self.config = config
            self.store.record_reload(True)
            log.info("config reloaded from %s: %d probes", config.source, len(config.probes))
            return None

    def serve(self) -> int:
        try:
            config = self.load()
        except ConfigError as exc:
            for message in exc.messages:
                log.error("invalid config: %s: %s", exc.source, message)
            return 1
        self.config = config
        host, port = split_listen_address(self.listen_address_flag or config.web.listen_address)
        web_config_path = self.web_config_flag or config.web.config_file
        web_config = None
        if web_config_path:
            try:
                web_config = WebConfigSource(web_config_path)
            except WebConfigError as exc:
                for message in exc.messages:
                    log.error("invalid web config: %s: %s", exc.source, message)
                return 1
        app = WebApp(self.store, self.scheduler.ready, self.reload if self.enable_lifecycle else None, self._probe_once)
        try:
            self.web = WebServer(app, host, port, web_config)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc.strerror)
            return 1
        self.scheduler.tracing = setup_tracing(config.tracing)
        if self.scheduler.tracing.enabled:
            app.register_live(TracingCollector(lambda: self.scheduler.tracing))
        try:
            self._apply(config)
        except ConfigError as exc:  # a probe that cannot be built
            for message in exc.messages:
                log.error("invalid config: %s: %s", exc.source, message)
            return 1
        self.store.record_reload(True)
        self.web.start()
        log.info(
            "certscope started: config=%s probes=%d shard=%d/%d listening on %s:%d%s",
            config.source,
            len(config.probes),
            self.shard.index,
            self.shard.count,
            host,
            self.web.port,
            " (https)" if self.web.tls else "",
        )
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        while True:
            self._reload_requested.wait(timeout=0.5)
            if self._stop.is_set():
                break
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
        log.info("stopping")
        exit_after(STOP_GRACE_SECONDS)
        self.web.stop()
        self.scheduler.stop(wait=False)
        self.scheduler.tracing.shutdown()
        return 0

    def _apply(self, config: Config) -> None:
        """``Scheduler.apply`` with the collector set for first rounds until ready (at
        once when the config has no probe, or when applying fails and the running
        config is ready)."""
        self.collector.begin()
        try:
            self.scheduler.apply(config)
        finally:
            if self.scheduler.ready():
                self.collector.end()

    def _probe_once(self, module: str, target: str, scrape_timeout: float | None) -> bytes:
        config = self.config
        if config is None:
            raise ProbeRefused(404, "not configured yet")
        return probe_target(config, self.scheduler.probe, module, target, scrape_timeout, self.scheduler.tracing)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested.set()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self._reload_requested.set()  # wake the main loop


def exit_after(seconds: float) -> None:
    """Exit the process ``seconds`` from now if it has not exited by itself.

    Python joins the probes' worker threads at exit, so a thread stuck in a call
    without a deadline would keep a stopped daemon alive; this timer ends it."""

    def force() -> None:
        log.warning("still stopping after %.0f s (a probe is stuck); exiting now", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
