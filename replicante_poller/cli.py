"""Command line: `replicante-poller VERB ...` (DESIGN section 4).

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. User mistakes are
one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from . import __version__
from .actions.api import action_json, decode_submission, submit
from .actions.journal import ActionStore, open_journal
from .actions.signing import add_keygen_arguments, keygen_command
from .agentside.gateway import Gateway
from .agentside.gateway_config import load_gateway_config
from .cli_signals import STOP, install_stop_handlers, signal_commands
from .config import Config, load_config
from .converters import to_agent_url, to_listen, to_positive_int
from .durations import format_duration, rfc3339
from .errors import ConfigError, PollerError, SubmissionError
from .limits import MAX_ARGS_DEPTH
from .logformat import TEXT_FORMAT, JsonFormatter
from .polling.discovery import Target, check_globs
from .polling.health import Health
from .polling.poll import poll_target
from .polling.state import TargetView
from .polling.tls import TlsContexts
from .polling.transport import Transport
from .service import Service, check_fd_limit, check_resources, configured_signer, discover_all, listener_context
from .web.server import ListenError, listen_family
from .web.status import target_json

log = logging.getLogger("replicante_poller")


def _positive(text: str) -> int:
    """argparse's form of to_positive_int: its message, not `invalid int value`."""
    try:
        return to_positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> tuple[str, int]:
    try:
        return to_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _setup_logging(level: str, form: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    if level.lower() != "debug":  # kazoo logs each reconnection attempt; the coordinator says what matters once
        logging.getLogger("kazoo").setLevel(logging.ERROR)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(config: Config, targets: Sequence[Target]) -> str:
    """What a configuration amounts to, for `check-config`."""
    poll = config.poller.poll
    clusters = sorted({t.cluster_id for t in targets})
    actions, coordination = config.actions, config.coordination
    zookeeper = f"ZooKeeper {coordination.hosts}{coordination.path.rstrip('/')}"
    journal = f"{zookeeper}/journal/actions" if coordination.backend == "zookeeper" else actions.journal
    lines = [
        f"{config.source}: OK",
        f"  poller: interval {format_duration(poll.interval)}, timeout {format_duration(poll.timeout)}, "
        f"{config.poller.workers} workers, fall {config.poller.fall}, rise {config.poller.rise}",
        f"  tls: CA {config.tls.ca_file or 'system trust store'}, minimum TLS {config.tls.min_version}"
        + (", client certificate" if config.tls.client_cert else ""),
        f"  http: listening on {config.http.host}:{config.http.port}",
        f"  discovery: {', '.join(config.discovery.files) or 'no files'}, checked every {format_duration(config.discovery.refresh)}",
        "  actions: " + (f"enabled, key {actions.signing_key}, journal {journal}" if actions.enabled else "disabled"),
        "  coordination: " + (f"{zookeeper}, session timeout {format_duration(coordination.session_timeout)}"
                              if coordination.backend == "zookeeper" else "none (this instance polls every cluster)"),
        f"  {_count(len(targets), 'agent')} in {_count(len(clusters), 'cluster')}",
    ]
    for cluster in clusters:
        members = [t for t in targets if t.cluster_id == cluster]
        lines.append(f"    {cluster}: {_count(len(members), 'agent')}, every {format_duration(members[0].poll.interval)}")
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_globs(config)
    listener_context(config)  # the listener's certificate and key, as run loads them
    try:
        listen_family((config.http.host, config.http.port))  # what run binds must resolve
    except ListenError as exc:
        raise ConfigError(config.source, "http", "listen", str(exc)) from None
    print(summary(config, check_resources(config)))
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    url = args.url.rstrip("/")
    target = next((t for t in discover_all(config) if t.url == url and args.cluster in (None, t.cluster_id)), None)
    if target is None:
        if args.cluster is None:
            raise ConfigError(args.config, None, None, f"{url} is not a configured agent; pass --cluster ID to poll it anyway")
        try:
            target = Target(args.cluster, to_agent_url(url), None, config.poller.poll, config.tls)
        except ValueError as exc:
            raise ConfigError("command line", None, "url", str(exc)) from None
    transport = Transport(TlsContexts(), dialer_threads=1).start()
    client = transport.client()
    try:
        result = poll_target(client, target)
    finally:
        client.close()
        transport.stop()
    last_success = result.started + result.duration if result.ok else None  # as FleetState.record sets it
    view = TargetView(target, result, Health().observe(result.ok, 1, 1), last_success, api=result.api)
    print(json.dumps(target_json(view), indent=2))
    return 0 if result.ok else 1


# The service allocates a few hundred short-lived objects a poll, and a large broker's shards
# ~200,000 at once; with CPython's default young-generation threshold (700) the collector
# then runs hundreds of times a poll over the retained state (20,000 shards: 345 ms a poll
# with it, 213 ms with this one; benchmarks/README.md). Objects of the poll path form no
# cycles worth collecting sooner: reference counting frees them.
GC_THRESHOLDS = (50_000, 20, 10)


def _listen_override(listen: Optional[tuple[str, int]]) -> Callable[[Config], Config]:
    """`run --listen HOST:PORT` wins over `[http] listen`, at start and at every reload."""
    if listen is None:
        return lambda config: config
    host, port = listen
    return lambda config: dataclasses.replace(config, http=dataclasses.replace(config.http, host=host, port=port))


def cmd_run(args: argparse.Namespace) -> int:
    gc.set_threshold(*GC_THRESHOLDS)  # a process-wide setting: the entry point of the service owns it
    config = load_config(args.config)
    check_globs(config)
    check_fd_limit(config)  # before Service sizes its worker pool by `workers`
    service = Service(config, config_path=args.config, adjust=_listen_override(args.listen))
    install_stop_handlers(service.stopping, reload=service.request_reload)  # before start: no window
    try:
        service.start()
    except ListenError as exc:
        if args.listen is not None:
            raise ConfigError("command line", None, "--listen", str(exc)) from None
        raise ConfigError(args.config, "http", "listen", str(exc)) from None
    try:
        service.stopping.wait()
    finally:
        service.stop()
    return 0


def _journal(config: Config, readonly: bool = False, create: bool = True) -> ActionStore:
    """The journal `run` uses: SQLite, or ZooKeeper's with `[coordination] backend = zookeeper`."""
    if not config.actions.enabled:
        raise ConfigError(config.source, "actions", "enabled", "actions are not enabled in this configuration")
    if config.coordination.backend == "zookeeper":
        from .coordination.journal import open_journal as open_zookeeper_journal

        return open_zookeeper_journal(config.coordination, config.source)
    assert config.actions.journal is not None
    return open_journal(config.source, config.actions.journal, readonly=readonly, create=create)


def cmd_action_submit(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    by_url = {t.url: t for t in discover_all(config)}  # HTTP-discovered agents included
    try:
        arguments = decode_submission(args.args)
    except SubmissionError as exc:
        raise ConfigError("command line", None, "--args", str(exc)) from None
    except RecursionError:  # what check_args would refuse anyway, before json.loads gives up
        raise ConfigError("command line", None, "--args", f"args are nested deeper than {MAX_ARGS_DEPTH} levels") from None
    except ValueError as exc:
        raise ConfigError("command line", None, "--args", f"not JSON: {exc}") from None
    if config.actions.enabled and config.actions.signing_key is not None:
        # the key run signs with: an action it could never send is not journaled
        configured_signer(config.source, config.actions.signing_key)
    journal = _journal(config)
    try:
        action = submit(journal, by_url.get, args.agent, args.kind, arguments)
    except SubmissionError as exc:
        raise ConfigError("command line", None, None, str(exc)) from None
    finally:
        journal.close()
    print(action.id)
    return 0


def cmd_action_list(args: argparse.Namespace) -> int:
    journal = _journal(load_config(args.config), readonly=True)
    try:
        actions = journal.list(args.limit)
    finally:
        journal.close()
    print(f"{'ID':<36}  {'STATE':<10} {'ATT':>3}  {'CREATED':<24} {'KIND':<32} AGENT / MESSAGE")
    for a in actions:
        print(f"{a.id:<36}  {a.state.value:<10} {a.attempts:>3}  {rfc3339(a.created_ts):<24} {a.kind:<32} {a.agent}")
        print(f"{'':<36}  {a.message}")
    return 0


def with_rfc3339_times(document: dict) -> dict:
    """An action's JSON (`action_json`) with every time of ours, the action's `*_ts` and
    its attempts' `ts`, as RFC 3339 UTC (the agent's own history is shown as it wrote it)."""
    shown = {key: rfc3339(value) if key.endswith("_ts") else value for key, value in document.items()}
    shown["attempts_log"] = [{**attempt, "ts": rfc3339(attempt["ts"])} for attempt in document["attempts_log"]]
    return shown


def cmd_action_show(args: argparse.Namespace) -> int:
    journal = _journal(load_config(args.config), readonly=True)
    try:
        action = journal.get(journal.resolve(args.id))
        assert action is not None
        print(json.dumps(with_rfc3339_times(action_json(journal, action)), indent=2))
    finally:
        journal.close()
    return 0


def cmd_action_cancel(args: argparse.Namespace) -> int:
    journal = _journal(load_config(args.config), create=False)
    try:
        action = journal.cancel(journal.resolve(args.id))
    finally:
        journal.close()
    print(f"{action.id}: {action.state.value}: {action.message}")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    settings = load_gateway_config(args.config)
    gateway = Gateway(settings)
    commands = signal_commands()
    try:
        gateway.start()
    except ListenError as exc:
        key = "metrics_listen" if exc.address == settings.metrics_listen else "listen"
        raise ConfigError(args.config, "gateway", key, str(exc)) from None
    try:
        while commands.get() != STOP:  # SIGHUP: the keyring (keys, revoked) is re-read
            gateway.reload(args.config)
    finally:
        gateway.stop()
    return 0


# Tools, not the service: their modules (and trustme) are imported only when their verb runs.
TOOL_VERBS = {"demo": (".agentsim.demo", "simulated agents on loopback and the service polling them"),
              "agent-sim": (".agentsim", "the reference agent simulator")}


def _tool(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module, __package__).main(args))
    return run


def parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser of every verb; a tool verb's own arguments are added (and its
    module imported) only when `argv` names it."""
    # --log-level and --log-format are taken before or after the verb (SUPPRESS: a verb's
    # parser leaves what the root parser read alone when it is not given again).
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"],
                      help="default info")
    logs.add_argument("--log-format", default=argparse.SUPPRESS, choices=["text", "json"],
                      help="text (default) or json: one JSON object a line")
    root = argparse.ArgumentParser(prog="replicante-poller", description="Poll Replicante agents over HTTPS.",
                                   parents=[logs])
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = root.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(group: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
             help: str, config: bool = False) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help, parents=[logs])
        sub.set_defaults(func=func)
        if config:
            sub.add_argument("--config", required=True, help="the INI configuration file")
        return sub

    run = verb(verbs, "run", cmd_run, "run the service until SIGTERM/SIGINT (SIGHUP reloads)", config=True)
    run.add_argument("--listen", type=_listen, default=None,
                     help="HOST:PORT of /metrics, the status API and page (overrides [http] listen)")
    verb(verbs, "check-config", cmd_check_config, "validate a configuration and summarise it", config=True)
    poll = verb(verbs, "poll", cmd_poll, "poll one agent once and print the result as JSON (exit 0 when UP)", config=True)
    poll.add_argument("--cluster", help="cluster id to expect, for an agent not in the configuration")
    poll.add_argument("url")
    add_keygen_arguments(verb(verbs, "keygen", keygen_command, "write an Ed25519 key pair for signing actions"))
    action = verbs.add_parser("action", help="submit and inspect signed actions", description="signed actions")
    actions = action.add_subparsers(dest="action_verb", metavar="ACTION_VERB", required=True)
    sub = verb(actions, "submit", cmd_action_submit, "durably queue an action; prints its id", config=True)
    sub.add_argument("--agent", required=True, help="agent URL, as in the configuration or discovery")
    sub.add_argument("--kind", required=True, help="action kind, e.g. agent.replicante.io/test.ping")
    sub.add_argument("--args", default="null", help="action arguments as JSON (default null)")
    verb(actions, "list", cmd_action_list, "actions in the journal, newest first", config=True).add_argument(
        "--limit", type=_positive, default=50, help="how many actions, newest first (default 50)")
    verb(actions, "show", cmd_action_show, "one action with its attempts and agent history (times in RFC 3339 UTC)",
         config=True).add_argument("id", help="the action's id, or a unique prefix of it (4 characters or more)")
    verb(actions, "cancel", cmd_action_cancel, "cancel an action not delivered yet (PENDING)", config=True).add_argument(
        "id", help="the action's id, or a unique prefix of it (4 characters or more)")
    verb(verbs, "gateway", cmd_gateway, "verifying reverse proxy in front of an agent", config=True)
    for name, (module, help) in TOOL_VERBS.items():
        sub = verb(verbs, name, _tool(module), help)
        if name in argv:
            importlib.import_module(module, __package__).add_arguments(sub)
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(argv).parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return args.func(args)
    except PollerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `action list | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
