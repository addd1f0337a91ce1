"""The frame every status page shares: head, style, script, header, and the small pieces of
markup the pages compose (escaped text, badges, times, links to an agent).

Self-contained: one inline `<style>` allowed by its hash, one same-origin script
(`SCRIPT_PATH`), a `data:` favicon; `PAGE_CSP` allows nothing else. Every string that is
not this module's own goes through `esc` (text and attributes alike, quotes included).
"""
from __future__ import annotations

import base64
import hashlib
import html
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .. import __version__
from ..models import NodeStatus
from ..polling.state import TargetView

_STATIC = Path(__file__).with_name("static")
STYLE = (_STATIC / "status.css").read_text(encoding="utf-8").strip()
SCRIPT = (_STATIC / "status.js").read_bytes()
SCRIPT_PATH = "/static/status.js"
_SCRIPT_SRC = f"{SCRIPT_PATH}?v={hashlib.sha256(SCRIPT).hexdigest()[:12]}"  # a new script, a new URL
PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'sha256-"
            + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
            + "'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HTML = "text/html; charset=utf-8"
_ICON = ("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
         "%3Ccircle cx='8' cy='8' r='7' fill='%23{}'/%3E%3C/svg%3E")
ICON_OK, ICON_BAD, ICON_IDLE = "1a7f37", "c62828", "6b7280"


def esc(value: object) -> str:
    """`value` as HTML text, safe in an element and in a quoted attribute."""
    return html.escape(str(value), quote=True)


def agent_href(cluster: str, url: str) -> str:
    """The link to an agent's page (percent-encoded, then escaped for the attribute)."""
    return esc("/agent?" + urllib.parse.urlencode({"cluster": cluster, "url": url}, quote_via=urllib.parse.quote))


def query_href(params: dict[str, str]) -> str:
    """A link to the overview with these filters (empty values left out)."""
    kept = {k: v for k, v in params.items() if v}
    return esc("/?" + urllib.parse.urlencode(kept, quote_via=urllib.parse.quote) if kept else "/")


def row(css: str, columns: Sequence[str], cells: Sequence[tuple[str, str]]) -> str:
    """A table row; each cell (class, markup) carries its column's name for the card layout
    of narrow screens (`head` cells open the card, unlabelled)."""
    return f'<tr class="{esc(css)}">' + "".join(
        f'<td class="{esc(c)}" data-label="{esc(label)}">{content}</td>'
        for label, (c, content) in zip(columns, cells)) + "</tr>"


def table(table_id: str, columns: Sequence[str], rows: Iterable[str]) -> str:
    """A table of `rows` that becomes cards on narrow screens."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(rows)
    return f'<table class="cards" id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def badge(status: str) -> str:
    """A status as a coloured pill (`status` is one of the fixed statuses or PENDING)."""
    return f'<span class="badge s-{esc(status)}">{esc(status)}</span>'


def utc(timestamp: float, with_date: bool = True) -> str:
    """A moment in UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ" if with_date else "%H:%M:%SZ", time.gmtime(timestamp))


def span(seconds: float) -> str:
    """A length of time for people: `850 ms`, `12 s`, `5 min`, `3 h`, `12 d`, `3 years`."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds < 730 * 86400:
        return f"{seconds / 86400:.0f} d"
    return f"{seconds / (365.25 * 86400):.0f} years"


def ago(timestamp: Optional[float], now: float) -> str:
    """`12 s ago` (or `in 5 min`), the exact UTC time as a tooltip; `never` for None."""
    if timestamp is None:
        return '<span class="muted">never</span>'
    if timestamp > now + 0.5:
        words = f"in {span(timestamp - now)}"
    else:
        words = "just now" if now - timestamp < 1 else f"{span(now - timestamp)} ago"
    return f'<time datetime="{esc(utc(timestamp).replace(" ", "T"))}" title="{esc(utc(timestamp))}">{words}</time>'


def document(title: str, body: str, icon: str = ICON_IDLE, refresh: float = 0.0) -> str:
    """A whole page: head (viewport, style, script, favicon), the header, then `body`."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="icon" href="{esc(_ICON.format(icon))}">'
        f'<style>{STYLE}</style><script src="{esc(_SCRIPT_SRC)}" defer></script></head>'
        f'<body data-refresh="{refresh:g}"><header class="top"><h1><a href="/">replicante-poller</a></h1>'
        '<nav><span id="refresh-state" role="status"></span><button id="pause" type="button" hidden>Pause</button>'
        '<a href="/api/v1/targets">targets JSON</a><a href="/metrics">metrics</a>'
        f'<span class="muted">v{esc(__version__)}</span></nav></header>'
        f'<div class="wrap">{body}</div></body></html>'
    )


def node_status(status: Optional[NodeStatus]) -> str:
    """A replisdk agent's node status as escaped text (`UNKNOWN: detail`), empty when none."""
    if status is None:
        return ""
    return esc(status.status) + (f": {esc(status.detail)}" if status.detail else "")


CERT_WARN = 14 * 86400  # a certificate that expires sooner is a problem (as the shipped alert rule)


def status_of(view: TargetView) -> str:
    """The view's status, PENDING before its first poll."""
    return view.result.status.value if view.result else "PENDING"


def notes(view: TargetView, now: float) -> list[str]:
    """What else an operator should see about a target, as small labels: flapping, a
    deferral (the agent's Retry-After), a certificate that expires soon or has expired."""
    found = []
    if view.flapping:
        found.append('<span class="note bad">flapping</span>')
    if view.deferred_until is not None and view.deferred_until > now:
        found.append(f'<span class="note">deferred {ago(view.deferred_until, now)} (Retry-After)</span>')
    expiry = view.result.cert_not_after if view.result else None
    if expiry is not None and expiry - now < CERT_WARN:
        words = "certificate expired" if expiry <= now else "certificate expires"
        found.append(f'<span class="note{" bad" if expiry <= now else ""}">{words} {ago(expiry, now)}</span>')
    return found
