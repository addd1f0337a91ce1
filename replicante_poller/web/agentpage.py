"""The page of one agent (`/agent?cluster=ID&url=URL`): its status and why, health,
deferral, API generation, node status, versions, certificate expiry, shards with role and
lag, its recent polls (failures kept longer), and its recent actions (never their args:
those need the actions API's bearer token)."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Protocol

from ..errors import StoreError
from ..models import Offset, Shard
from ..polling.state import TargetView
from .layout import (
    ICON_BAD,
    ICON_IDLE,
    ICON_OK,
    ago,
    badge,
    document,
    esc,
    node_status,
    notes,
    query_href,
    row,
    span,
    table,
    status_of,
    utc,
)

log = logging.getLogger(__name__)
MAX_SHARDS = 500  # shard rows shown (a broker may hold 20,000 partitions)
ACTIONS_SHOWN = 20


class AgentActions(Protocol):
    """Where the page reads an agent's recent actions (`ActionsApi.agent_actions`)."""

    def agent_actions(self, agent: str, limit: int = ACTIONS_SHOWN) -> list[dict[str, Any]]: ...


def agent_page(views: Iterable[TargetView], cluster: str, url: str, actions: Optional[AgentActions], now: float,
               refresh: float) -> tuple[int, str]:
    """The HTTP status and page of the agent `url` of `cluster` (404 when there is none)."""
    view = next((v for v in views if v.target.key == (cluster, url)), None)
    crumbs = (f'<nav class="crumbs"><a href="/">All agents</a> › '
              f'<a href="{query_href({"cluster": cluster})}" class="v">{esc(cluster)}</a> › '
              f'<span class="v mono">{esc(url)}</span></nav>')
    if view is None:
        live = (f'<main id="live" data-generated="{now:.3f}"><div class="hero down"><h2>No such agent</h2>'
                f'<p>No agent <span class="v mono">{esc(url)}</span> in cluster <span class="v">{esc(cluster)}</span>: '
                'it is not in the configuration or discovery (any more).</p></div></main>')
        return 404, document("unknown agent · replicante-poller", crumbs + live, ICON_IDLE, refresh)
    status = status_of(view)
    icon = ICON_OK if status == "UP" else ICON_IDLE if status == "PENDING" else ICON_BAD
    live = (f'<main id="live" data-generated="{now:.3f}">' + _hero(view, now)
            + f'<p class="meta">Updated {esc(utc(now, with_date=False))}'
            + (f" · refreshes every {esc(span(refresh))}" if refresh else " · auto-refresh off") + "</p>"
            + '<div class="panels">' + _polling(view, now) + _node(view) + _tls(view, now) + "</div>"
            + _shards(view) + _polls(view, now) + _actions(view, actions, now) + "</main>")
    title = f"{status} {view.target.url} · replicante-poller"
    return 200, document(title, crumbs + live, icon, refresh)


def _hero(view: TargetView, now: float) -> str:
    result, status = view.result, status_of(view)
    css = {"UP": "up", "AGENT_DOWN": "down", "NODE_DOWN": "node"}.get(status, "")
    reason = f' <span class="reason">{esc(result.reason.value)}</span>' if result and result.reason else ""
    message = esc(result.message) if result else "not polled yet"
    labels = "".join(notes(view, now))
    store = result.datastore if result else None
    node = f'<span class="v">{esc(store.node_id)}</span> · {esc(store.kind)} {esc(store.version)} · ' if store else ""
    return (f'<section class="hero {css}">{badge(status)}{reason}<h2 class="v mono">{esc(view.target.url)}</h2>'
            f'<div class="sub">{node}cluster <span class="v">{esc(view.target.cluster_id)}</span></div>'
            f'<p class="v">{message}</p>{f"<p>{labels}</p>" if labels else ""}</section>')


def _facts(title: str, rows: list[tuple[str, str]]) -> str:
    """A panel of label/value pairs (values are markup, already escaped)."""
    items = "".join(f"<dt>{esc(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return f'<section class="panel"><h3>{esc(title)}</h3><dl>{items}</dl></section>'


def _when(timestamp: Optional[float], now: float) -> str:
    return ago(timestamp, now) + (f' <span class="sub">{esc(utc(timestamp))}</span>' if timestamp is not None else "")


def _polling(view: TargetView, now: float) -> str:
    result, health = view.result, view.health
    streak = f' <span class="sub">({health.streak} {"failed" if health.healthy else "ok"} in a row)</span>' \
        if health.streak else ""
    deferred = _when(view.deferred_until, now) if view.deferred_until and view.deferred_until > now else "no"
    return _facts("Polling", [
        ("Health", esc(health.state.value) + streak),
        ("Flapping", '<span class="note bad">yes</span>' if view.flapping else "no"),
        ("Deferred", deferred),
        ("Last poll", _when(result.started, now) if result else '<span class="muted">never</span>'),
        ("Took", esc(span(result.duration)) if result else "–"),
        ("Last success", _when(view.last_success, now)),
        ("Interval", f"every {esc(span(view.target.poll.interval))}, timeout {esc(span(view.target.poll.timeout))}"),
    ])


def _named(cluster_id: str, name: Optional[str]) -> str:
    """A cluster id and, when there is one, its display name."""
    return f'<span class="v">{esc(cluster_id)}</span>' + (f' <span class="sub v">({esc(name)})</span>' if name else "")


def _node(view: TargetView) -> str:
    result = view.result
    store = result.datastore if result else None
    agent = result.agent if result else None
    reported = node_status(result.node_status) if result else ""
    rows = [
        ("Node id", f'<span class="v mono">{esc(store.node_id)}</span>' if store else "–"),
        ("Cluster", _named(view.target.cluster_id, view.target.display_name)),
        ("Reported cluster", _named(store.cluster_id, store.cluster_display_name) if store else "–"),
        ("Datastore", f'<span class="v">{esc(store.kind)} {esc(store.version)}</span>' if store else "–"),
        ("Node status", f'<span class="v">{reported}</span>' if reported else "–"),
        ("API", esc(view.api) if view.api else '<span class="muted">not learned yet</span>'),
        ("Agent version", f'<span class="v">{esc(agent.version.number)}</span>' if agent else "–"),
        ("Checkout", f'<span class="v mono">{esc(agent.version.checkout)}</span>' if agent else "–"),
        ("Taint", f'<span class="v">{esc(agent.version.taint)}</span>' if agent else "–"),
    ]
    return _facts("Node", rows)


def _tls(view: TargetView, now: float) -> str:
    expiry = view.result.cert_not_after if view.result else None
    if expiry is None:
        return _facts("TLS", [("Certificate", '<span class="muted">not seen yet</span>')])
    words = "expired" if expiry <= now else "expires"
    return _facts("TLS", [("Certificate", f"{words} {ago(expiry, now)}"), ("Not after", esc(utc(expiry)))])


def _offset(offset: Optional[Offset]) -> str:
    if offset is None:
        return '<span class="muted">–</span>'
    unit = offset.unit if offset.custom else {"seconds": "s", "milliseconds": "ms"}.get(offset.unit, offset.unit)
    return f'{offset.value:,} <span class="v">{esc(unit)}</span>'


def _lag_order(shard: Shard) -> tuple[bool, float]:
    """Largest lag first (milliseconds compared as seconds), shards without lag last."""
    if shard.lag is None:
        return (True, 0.0)
    scale = 0.001 if shard.lag.unit == "milliseconds" and not shard.lag.custom else 1.0
    return (False, -shard.lag.value * scale)


def _role(shard: Shard) -> str:
    if shard.role == "unknown":
        return f'unknown: <span class="v">{esc(shard.role_detail or "")}</span>'
    return esc(shard.role)


def _section(title: str, content: str) -> str:
    return f"<section><h3>{esc(title)}</h3>{content}</section>"


def _shards(view: TargetView) -> str:
    shards = view.result.shards if view.result else None
    if shards is None:
        return _section("Shards", '<p class="muted">Not reported by the latest poll.</p>')
    if not shards:
        return _section("Shards", '<p class="muted">The node holds no shard.</p>')
    ordered = sorted(shards, key=_lag_order)[:MAX_SHARDS]
    columns = ("Shard", "Role", "Lag", "Commit offset")
    rows = (row("row", columns, (("head v mono", esc(s.id)), ("head", _role(s)), ("num", _offset(s.lag)),
                                 ("num", _offset(s.commit_offset)))) for s in ordered)
    more = f", the {MAX_SHARDS:,} that lag most shown" if len(shards) > MAX_SHARDS else ""
    return _section(f"Shards ({len(shards):,}{more})", table("shards", columns, rows))


def _polls(view: TargetView, now: float) -> str:
    outcomes = view.recent.outcomes()[::-1]
    if not outcomes:
        return _section("Recent polls", '<p class="muted">None since the service started.</p>')
    columns = ("When", "Status", "Reason", "Took", "Message")
    rows = (row("row" if o.ok else "row failed", columns, (
        ("head nowrap", f'{esc(utc(o.started, False))} <span class="sub">{ago(o.started, now)}</span>'),
        ("head", badge(o.status.value)),
        ("", f'<span class="reason">{esc(o.reason.value)}</span>' if o.reason else ""),
        ("num", esc(span(o.duration))),
        ("msg v", esc(o.message)))) for o in outcomes)
    failed = sum(1 for o in outcomes if not o.ok)
    return _section(f"Recent polls ({len(outcomes)}, {failed} failed)", table("polls", columns, rows)
                    + '<p class="sub">The latest polls, and the latest failures even when older, since the service '
                    "started.</p>")


def _actions(view: TargetView, actions: Optional[AgentActions], now: float) -> str:
    if actions is None:
        return _section("Actions", '<p class="muted">Signed actions are not enabled on this poller.</p>')
    try:
        found = actions.agent_actions(view.target.url, ACTIONS_SHOWN)
    except StoreError as exc:
        log.error("status page: %s", exc)
        return _section("Actions", '<p class="warning">The action journal cannot be read (see the service log).</p>')
    if not found:
        return _section("Actions", '<p class="muted">No recent action for this agent.</p>')
    columns = ("Id", "Kind", "State", "Attempts", "Updated")
    rows = (row("row", columns, (("head mono v", esc(a["id"])), ("v", esc(a["kind"])), ("", esc(a["state"])),
                                 ("num", esc(a["attempts"])), ("nowrap", ago(a["updated_ts"], now))))
            for a in found)
    return _section("Actions", table("actions", columns, rows)
                    + '<p class="sub">Arguments are not shown here: the actions API gives them, with its token.</p>')
