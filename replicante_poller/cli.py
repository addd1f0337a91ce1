"""Command line: `replicante-poller VERB ...` (DESIGN section 4).

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. User mistakes are
one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Optional, Sequence

from . import __version__
from .config import Config, load_config
from .discovery import Target, discover
from .durations import format_duration
from .errors import ConfigError
from .cli_signals import install_stop_handlers

log = logging.getLogger("replicante_poller")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    targets = discover(config)
    print(summary(config, targets))
    return 0


def summary(config: Config, targets: Sequence[Target]) -> str:
    """What a configuration amounts to, for `check-config`."""
    poll = config.poller.poll
    clusters = sorted({t.cluster_id for t in targets})
    lines = [
        f"{config.source}: OK",
        f"  poller: interval {format_duration(poll.interval)}, timeout {format_duration(poll.timeout)}, "
        f"{config.poller.workers} workers, fall {config.poller.fall}, rise {config.poller.rise}",
        f"  tls: CA {config.tls.ca_file or 'system trust store'}, minimum TLS {config.tls.min_version}"
        + (", client certificate" if config.tls.client_cert else ""),
        f"  http: listening on {config.http.host}:{config.http.port}",
        f"  discovery: {', '.join(config.discovery.files) or 'no files'}, refresh {format_duration(config.discovery.refresh)}",
        f"  {len(targets)} agents in {len(clusters)} clusters",
    ]
    for cluster in clusters:
        members = [t for t in targets if t.cluster_id == cluster]
        lines.append(f"    {cluster}: {len(members)} agents, every {format_duration(members[0].poll.interval)}")
    return "\n".join(lines)


def cmd_poll(args: argparse.Namespace) -> int:
    from .deadlines import DeadlineReaper
    from .discovery import Target
    from .health import Health
    from .poll import poll_target
    from .state import TargetView
    from .status_api import target_json
    from .tls import TlsContexts
    from .transport import AgentClient

    config = load_config(args.config)
    url = args.url.rstrip("/")
    target = next((t for t in discover(config) if t.url == url and (args.cluster in (None, t.cluster_id))), None)
    if target is None:
        if args.cluster is None:
            raise ConfigError(args.config, None, None, f"{url} is not a configured agent; pass --cluster ID to poll it anyway")
        from .config import to_agent_url
        target = Target(args.cluster, to_agent_url(url), None, config.poller.poll, config.tls)
    reaper = DeadlineReaper().start()
    client = AgentClient(TlsContexts(), reaper)
    try:
        result = poll_target(client, target)
    finally:
        client.close()
        reaper.stop()
    view = TargetView(target, result, Health().observe(result.ok, 1, 1), result.started if result.ok else None)
    print(json.dumps(target_json(view), indent=2))
    return 0 if result.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .service import Service

    service = Service(load_config(args.config), config_path=args.config)
    service.start()
    try:
        install_stop_handlers(service.stopping, reload=service.request_reload)
        service.stopping.wait()
    finally:
        service.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(args)


def cmd_agent_sim(args: argparse.Namespace) -> int:
    from . import agentsim

    return agentsim.main(args)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    from . import agentsim, demo

    root = argparse.ArgumentParser(prog="replicante-poller", description="Poll Replicante agents over HTTPS.")
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    root.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    verbs = root.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    verb("run", cmd_run, "run the service until SIGTERM/SIGINT").add_argument("--config", required=True)
    verb("check-config", cmd_check_config, "validate a configuration and summarise it").add_argument("--config", required=True)
    poll = verb("poll", cmd_poll, "poll one agent once and print the result as JSON (exit 0 when UP)")
    poll.add_argument("--config", required=True)
    poll.add_argument("--cluster", help="cluster id to expect, for an agent not in the configuration")
    poll.add_argument("url")
    demo.add_arguments(verb("demo", cmd_demo, "simulated agents on loopback and the service polling them"))
    agentsim.add_arguments(verb("agent-sim", cmd_agent_sim, "the reference agent simulator"))
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
