"""Replicante Core's HTTP discovery protocol, asked every `[discovery] refresh`.

The protocol (replicante-io/replicore, `cluster/discovery` HTTP backend): POST the
configured JSON object with a `cursor` (null for the first page) and receive
`{"clusters": [record, ...], "cursor": str|null}`; ask again with the returned cursor
until it is null. Records are the discovery records of the files (`discovery_records`).

`HttpDiscovery.fetch` reads every page once; `HttpDiscoveryThread` does it every
`refresh` on its own thread (a slow server never holds the scheduler) and hands a changed
answer to the service. A failed round keeps the last good answer and is logged once per
run of failures.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Optional

from ..config import ClusterConfig, DiscoverySettings, PollSettings, TlsSettings
from ..converters import read_secret
from ..errors import ConfigError
from ..limits import MAX_SHARDS_BODY
from .discovery import discovery_records
from .transport import Failure, post_json

log = logging.getLogger(__name__)
MAX_PAGES = 10_000  # a server whose cursor never ends is an error, not an endless loop
MAX_PAGE_BODY = MAX_SHARDS_BODY  # a page of discovery records: thousands of clusters fit


class HttpDiscovery:
    """Reads every page of one HTTP discovery server."""

    def __init__(self, settings: DiscoverySettings, poll: PollSettings, tls: TlsSettings,
                 post: Callable[..., Any] = post_json):
        assert settings.http is not None
        self._settings, self._poll, self._tls, self._post = settings, poll, tls, post
        self._body = json.loads(settings.http_body)
        self._token = read_secret(settings.http_token_file, "discovery", "http_token_file") \
            if settings.http_token_file else None

    @property
    def source(self) -> str:
        return str(self._settings.http)

    def fetch(self) -> tuple[ClusterConfig, ...]:
        """Every cluster the server lists now; ConfigError naming the server and the page."""
        settings, records, cursor = self._settings, [], None
        for page in range(1, MAX_PAGES + 1):
            answer = self._post(settings.http, {**self._body, "cursor": cursor}, settings.http_timeout,
                                MAX_PAGE_BODY, settings.http_ca_file, self._token)
            where = f"page {page}"
            if isinstance(answer, Failure):
                raise ConfigError(self.source, where, None, f"HTTP discovery failed: {answer.message}")
            if not isinstance(answer, dict) or not isinstance(answer.get("clusters"), list):
                raise ConfigError(self.source, where, "clusters", "expected {\"clusters\": [...], \"cursor\": ...}")
            cursor = answer.get("cursor")
            if cursor is not None and not isinstance(cursor, str):
                raise ConfigError(self.source, where, "cursor", "expected a string or null")
            records.extend(answer["clusters"])
            if cursor is None:
                return tuple(discovery_records(records, self.source, self._poll, self._tls))
        raise ConfigError(self.source, None, "cursor", f"still paging after {MAX_PAGES} pages")


class HttpDiscoveryThread:
    """Asks the server every `refresh` seconds; `on_change` gets each new answer."""

    def __init__(self, discovery: HttpDiscovery, refresh: Callable[[], float],
                 on_change: Callable[[tuple[ClusterConfig, ...]], None],
                 on_failure: Callable[[bool], None] = lambda failed: None,
                 last: tuple[ClusterConfig, ...] = ()):
        self._discovery, self._refresh, self._on_change, self._on_failure = discovery, refresh, on_change, on_failure
        self._last: Optional[tuple[ClusterConfig, ...]] = last
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-discovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._refresh()):
            self.round()

    def round(self) -> None:
        """One read of every page (the thread's loop body)."""
        try:
            clusters = self._discovery.fetch()
        except ConfigError as exc:
            if not self._failing:
                log.error("HTTP discovery failed, keeping its last answer: %s", exc)
            self._failing = True
            self._on_failure(True)
            return
        except Exception:  # the top of this thread's loop: log, count, keep going
            log.exception("HTTP discovery error, keeping its last answer")
            self._on_failure(True)
            return
        if self._failing:
            log.info("HTTP discovery answers again (%d clusters)", len(clusters))
        self._failing = False
        self._on_failure(False)
        if clusters != self._last:
            self._last = clusters
            self._on_change(clusters)
