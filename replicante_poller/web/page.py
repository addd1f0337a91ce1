"""The status pages: the overview at `/` and the page of one agent at `/agent`.

The overview lists problems first (down agents, then UP ones with something to see:
flapping, unhealthy, deferred, a certificate about to expire), then agents not polled yet,
then the rest; counts on top; filters by cluster, status, reason and text are query
parameters (`/?cluster=ID&status=problems&reason=timeout&q=TEXT`), so a link shares a
view and the page works without JavaScript. Its script (`layout.SCRIPT_PATH`) refreshes
the live part in place every `refresh` seconds (parameter, default 10; 0 turns it off),
keeping scroll position and filters.
"""
from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from typing import Callable, Iterable, Optional

from ..polling.state import Reported, TargetView
from ..reasons import Reason
from .agentpage import AgentActions, agent_page
from .layout import (
    HTML,
    ICON_BAD,
    ICON_IDLE,
    ICON_OK,
    PAGE_CSP,
    SCRIPT,
    SCRIPT_PATH,
    agent_href,
    ago,
    badge,
    document,
    esc,
    node_status,
    notes,
    query_href,
    row,
    span,
    status_of,
    utc,
)

PATHS = frozenset({"/", "/agent", SCRIPT_PATH})
DEFAULT_REFRESH = 10.0
MAX_ROWS = 500  # rows of the overview unless `limit` says otherwise (problems come first)
STATUSES = ("problems", "UP", "AGENT_DOWN", "NODE_DOWN", "PENDING")
DOWN, WARN, PENDING, OK = range(4)  # the order of the overview
_COLUMNS = ("Status", "Cluster", "Agent", "Reason", "Health", "Last poll", "Message")


@dataclasses.dataclass(frozen=True)
class Page:
    """A response: status, content type, body and headers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def serve(path: str, query: str, snapshot: Callable[[], list[TargetView]], actions: Optional[AgentActions],
          now: float, reported: Callable[[], Iterable[Reported]] = lambda: ()) -> Page:
    """Answer one of PATHS: a page (with its CSP), or the page's script. `reported`: the
    agents other instances poll ([coordination]), shown with who reported them."""
    if path == SCRIPT_PATH:
        return Page(200, "text/javascript; charset=utf-8", SCRIPT, (("Cache-Control", "max-age=86400"),))
    headers = (("Content-Security-Policy", PAGE_CSP), ("Cache-Control", "no-store"))
    params = _params(query)
    if path == "/agent":
        status, text = agent_page(everyone(snapshot(), reported())[0], params.get("cluster", ""), params.get("url", ""), actions, now,
                                  _refresh(params.get("refresh")))
        return Page(status, HTML, text.encode(), headers)
    return Page(200, HTML, overview(snapshot(), Filters.parse(params), now, reported()).encode(), headers)


def _params(query: str) -> dict[str, str]:
    """The first value of each query parameter."""
    params: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, max_num_fields=20):
        params.setdefault(name, value)
    return params


def _refresh(text: Optional[str]) -> float:
    """Seconds between refreshes: the `refresh` parameter (0 turns it off, at most an hour)
    or, when absent or not a number of at least half a second, the default."""
    try:
        value = float(text) if text is not None else DEFAULT_REFRESH
    except ValueError:
        return DEFAULT_REFRESH
    if value == 0:
        return 0.0
    return min(value, 3600.0) if math.isfinite(value) and value >= 0.5 else DEFAULT_REFRESH


def _limit(text: str) -> int:
    """How many rows the overview shows: the `limit` parameter (a count, or `all`)."""
    if text == "all":
        return 10**9
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) and int(text) > 0 else MAX_ROWS


@dataclasses.dataclass(frozen=True)
class Filters:
    """What the overview shows, from its query parameters; values not understood are named
    in `ignored` and have no effect."""

    cluster: str = ""
    status: str = ""
    reason: str = ""
    text: str = ""
    refresh: float = DEFAULT_REFRESH
    limit: int = MAX_ROWS
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: dict[str, str]) -> "Filters":
        ignored = []
        status = params.get("status", "")
        if status and status not in STATUSES:
            ignored.append(f"status {status!r}")
            status = ""
        reason = params.get("reason", "")
        if reason and reason not in {r.value for r in Reason}:
            ignored.append(f"reason {reason!r}")
            reason = ""
        return cls(params.get("cluster", ""), status, reason, params.get("q", "").strip()[:200],
                   _refresh(params.get("refresh")), _limit(params.get("limit", "")), tuple(ignored))

    def link(self, **changes: str) -> str:
        """The overview with these filters, `changes` applied (an escaped href)."""
        params = {"cluster": self.cluster, "status": self.status, "reason": self.reason, "q": self.text,
                  "refresh": f"{self.refresh:g}" if self.refresh != DEFAULT_REFRESH else "",
                  "limit": str(self.limit) if self.limit != MAX_ROWS else ""}
        params.update(changes)
        return query_href(params)

    def matches_scope(self, view: TargetView) -> bool:
        """Within the cluster and the text searched (what the counts on top cover)."""
        if self.cluster and view.target.cluster_id != self.cluster:
            return False
        if not self.text:
            return True
        result = view.result
        haystack = [view.target.cluster_id, view.target.url, view.target.display_name or "",
                    result.message if result else "",
                    result.datastore.node_id if result and result.datastore else ""]
        needle = self.text.casefold()
        return any(needle in item.casefold() for item in haystack)

    def matches(self, view: TargetView, rank: int) -> bool:
        if not self.matches_scope(view):
            return False
        if self.status == "problems" and rank not in (DOWN, WARN):
            return False
        if self.status and self.status != "problems" and status_of(view) != self.status:
            return False
        if self.reason:
            result = view.result
            return result is not None and result.reason is not None and result.reason.value == self.reason
        return True


def rank(view: TargetView, now: float) -> int:
    """Where a target goes in the overview: DOWN, WARN (UP with something to see), PENDING, OK."""
    result = view.result
    if result is None:
        return PENDING
    if not result.ok:
        return DOWN
    if view.health.state.value == "unhealthy" or notes(view, now):
        return WARN
    return OK


def overview(views: Iterable[TargetView], filters: Filters, now: float, reported: Iterable[Reported] = ()) -> str:
    """The overview page: the agents polled here and those `reported` by other instances."""
    views, reports = everyone(views, reported)
    ranked = sorted(((rank(v, now), v) for v in views), key=lambda item: (item[0], item[1].target.key))
    scoped = [(r, v) for r, v in ranked if filters.matches_scope(v)]
    shown = [(r, v) for r, v in scoped if filters.matches(v, r)]
    problems = sum(1 for r, _ in ranked if r in (DOWN, WARN))
    pending = sum(1 for r, _ in ranked if r == PENDING)
    if problems:
        title, icon = f"{problems} problem{'s' if problems != 1 else ''} · replicante-poller", ICON_BAD
    elif ranked and not pending:
        title, icon = f"all {len(ranked)} UP · replicante-poller", ICON_OK
    else:
        title, icon = "replicante-poller", ICON_IDLE
    clusters = sorted({v.target.cluster_id: v.target.display_name for _, v in ranked}.items())
    live = (f'<main id="live" data-generated="{now:.3f}">' + _headline(ranked, problems, pending)
            + _tiles(scoped, filters) + _reasons(scoped, filters)
            + f'<p class="meta">Updated {esc(utc(now, with_date=False))}'
            + (f" · refreshes every {esc(span(filters.refresh))}" if filters.refresh else " · auto-refresh off")
            + f" · showing {len(shown):,} of {len(ranked):,} agents</p>"
            + "".join(f'<p class="warning">Ignored {esc(item)}: not a value this filter takes.</p>'
                      for item in filters.ignored)
            + _table(shown, filters, now, reports) + "</main>")
    return document(title, _form(filters, clusters) + live, icon, filters.refresh)


def _headline(ranked: list[tuple[int, TargetView]], problems: int, pending: int) -> str:
    if not ranked:
        words, css = "No agents configured or discovered", ""
    elif problems:
        words, css = f"{problems:,} of {len(ranked):,} agents need attention", "bad"
    elif pending:
        words, css = f"{pending:,} of {len(ranked):,} agents not polled yet", ""
    else:
        words, css = f"All {len(ranked):,} agents UP", "ok"
    return f'<div class="headline"><h2 class="{css}">{esc(words)}</h2></div>'


def _tiles(scoped: list[tuple[int, TargetView]], filters: Filters) -> str:
    counts = dict.fromkeys(("AGENT_DOWN", "NODE_DOWN", "PENDING", "UP"), 0)
    for _, view in scoped:
        counts[status_of(view)] += 1
    counts.update({"": len(scoped), "problems": sum(1 for r, _ in scoped if r in (DOWN, WARN))})
    names = {"": "agents", "problems": "problems", "AGENT_DOWN": "agent down", "NODE_DOWN": "node down",
             "PENDING": "not polled", "UP": "up"}
    colour = {"problems": "bad", "AGENT_DOWN": "bad", "NODE_DOWN": "node", "UP": "good"}
    tiles = []
    for status, name in names.items():
        css = ["tile", colour.get(status, "") if counts[status] else "zero"]
        if filters.status == status and not filters.reason:
            css.append("on")
        tiles.append(f'<a class="{" ".join(c for c in css if c)}" href="{filters.link(status=status, reason="")}">'
                     f"<b>{counts[status]:,}</b><span>{esc(name)}</span></a>")
    return '<nav class="tiles" aria-label="counts by status">' + "".join(tiles) + "</nav>"


def _reasons(scoped: list[tuple[int, TargetView]], filters: Filters) -> str:
    counts: dict[str, int] = {}
    for _, view in scoped:
        if view.result is not None and view.result.reason is not None:
            counts[view.result.reason.value] = counts.get(view.result.reason.value, 0) + 1
    if not counts:
        return ""
    chips = [f'<a class="{"on" if filters.reason == reason else ""}" href="{filters.link(reason=reason, status="")}">'
             f'<span class="reason">{esc(reason)}</span> {count:,}</a>'
             for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return ('<nav class="reasons" aria-label="failing by reason"><span class="muted">Failing by reason:</span>'
            + "".join(chips) + "</nav>")


def _form(filters: Filters, clusters: list[tuple[str, Optional[str]]]) -> str:
    def options(choices: list[tuple[str, str]], selected: str) -> str:
        return "".join(f'<option value="{esc(value)}"{" selected" if value == selected else ""}>{esc(label)}</option>'
                       for value, label in choices)

    cluster_choices = [("", "all clusters")] + [(c, f"{c} ({name})" if name else c) for c, name in clusters]
    if filters.cluster and filters.cluster not in {c for c, _ in clusters}:
        cluster_choices.append((filters.cluster, f"{filters.cluster} (unknown)"))
    status_choices = [("", "any status"), ("problems", "problems"), ("AGENT_DOWN", "AGENT_DOWN"),
                      ("NODE_DOWN", "NODE_DOWN"), ("PENDING", "not polled yet"), ("UP", "UP")]
    reason_choices = [("", "any reason")] + [(r.value, r.value) for r in Reason]
    hidden = "".join(f'<input type="hidden" name="{name}" value="{esc(value)}">' for name, value in (
        ("refresh", f"{filters.refresh:g}" if filters.refresh != DEFAULT_REFRESH else ""),
        ("limit", str(filters.limit) if filters.limit != MAX_ROWS else "")) if value)
    return (
        '<form id="filters" class="filters" method="get" action="/" role="search">'
        f'<label>Cluster<select name="cluster">{options(cluster_choices, filters.cluster)}</select></label>'
        f'<label>Status<select name="status">{options(status_choices, filters.status)}</select></label>'
        f'<label>Reason<select name="reason">{options(reason_choices, filters.reason)}</select></label>'
        f'<label>Search<input type="search" name="q" value="{esc(filters.text)}" placeholder="URL, node, message"'
        ' autocomplete="off"></label>'
        f'{hidden}<button type="submit">Apply</button>'
        f'<a class="clear" href="{filters.link(cluster="", status="", reason="", q="")}">Clear</a></form>'
    )


def _table(shown: list[tuple[int, TargetView]], filters: Filters, now: float, reports: dict[tuple[str, str], Reported]) -> str:
    if not shown:
        every = filters.link(status="", reason="", q="")
        return f'<p class="panel">No agent matches these filters: <a href="{every}">show every agent</a> of this scope.</p>'
    groups = (("problems", "Problems", (DOWN, WARN)), ("pending", "Not polled yet", (PENDING,)), ("ok", "UP", (OK,)))
    head = "".join(f"<th>{name}</th>" for name in _COLUMNS)
    bodies, budget = [], filters.limit
    for css, name, ranks in groups:
        rows = [(r, v) for r, v in shown if r in ranks]
        if not rows:
            continue
        kept = rows[:max(budget, 0)]
        budget -= len(kept)
        out = [f'<tbody class="{css}"><tr class="group"><th colspan="{len(_COLUMNS)}">{name} '
               f'<span class="muted">{len(rows):,}</span></th></tr>']
        out += [_agent_row(r, v, now, reports.get(v.target.key)) for r, v in kept]
        if len(kept) < len(rows):
            out.append(f'<tr class="group"><td class="more" colspan="{len(_COLUMNS)}">{len(rows) - len(kept):,} more '
                       f'not shown: filter by cluster or search, or <a href="{filters.link(limit="all")}">show all</a>.'
                       "</td></tr>")
        bodies.append("".join(out) + "</tbody>")
    return f'<table class="agents cards"><thead><tr>{head}</tr></thead>{"".join(bodies)}</table>'


def _agent_row(position: int, view: TargetView, now: float, report: Optional[Reported] = None) -> str:
    result, target = view.result, view.target
    name = target.display_name or (result.datastore.cluster_display_name if result and result.datastore else None)
    node = ""
    if result is not None and result.datastore is not None:
        store = result.datastore
        unusual = result.node_status is not None and result.node_status.status != "HEALTHY"
        odd = f' · <span class="v">{node_status(result.node_status)}</span>' if unusual else ""
        node = (f'<div class="sub"><span class="v">{esc(store.node_id)}</span> · {esc(store.kind)} '
                f'{esc(store.version)}{odd}</div>')
    health = esc(view.health.state.value)
    if view.health.streak:
        word = "failed" if view.health.healthy else "ok"
        health += f' <span class="sub">({view.health.streak} {word} in a row)</span>'
    labels = notes(view, now)
    if labels:
        health += "<div>" + "".join(labels) + "</div>"
    message = esc(result.message) if result else "not polled yet"
    if result is not None and result.ok:
        message = f'<span class="muted">{message}</span>'
    cells = (
        ("st head", badge(status_of(view))),
        ("head", f'<span class="v">{esc(target.cluster_id)}</span>' + (f'<div class="sub v">{esc(name)}</div>' if name else "")
         + (_reporter(report, now) if report else "")),
        ("agent", f'<a class="v mono" href="{agent_href(target.cluster_id, target.url)}">{esc(target.url)}</a>{node}'),
        ("nowrap", f'<span class="reason">{esc(result.reason.value)}</span>' if result and result.reason else ""),
        ("health", health),
        ("nowrap", ago(result.started, now) + f'<div class="sub">took {esc(span(result.duration))}</div>'
         if result else '<span class="muted">never</span>'),
        ("msg", message),
    )
    return row({DOWN: "row down", WARN: "row warn"}.get(position, "row"), _COLUMNS, cells)


def everyone(views: Iterable[TargetView], reported: Iterable[Reported]) -> tuple[list[TargetView], dict[tuple[str, str], Reported]]:
    """The views polled here, then those reported by other instances (never an agent twice:
    the view polled here wins), and those reports by target key."""
    views = list(views)
    here = {v.target.key for v in views}
    reports = {r.view.target.key: r for r in reported if r.view.target.key not in here}
    return views + [r.view for r in reports.values()], reports


def _reporter(report: Reported, now: float) -> str:
    """Who an agent polled by another instance was reported by, and when."""
    if report.by is None or report.published_at is None:
        return '<div class="sub">polled by another instance, not reported yet</div>'
    return f'<div class="sub">reported by <span class="v">{esc(report.by)}</span> {ago(report.published_at, now)}</div>'
