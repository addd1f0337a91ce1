"""Runs a command in a private network namespace with a stub DNS server (test_netns.py).

Started as `unshare --net --mount --fork python3 ns_helper.py ...`: inside the fresh
namespace only loopback exists, so nothing leaves the machine. The helper brings `lo`
up, bind-mounts its own resolv.conf (nameserver 127.0.0.1), hosts and nsswitch.conf
over /etc (the mounts are private to the namespace), serves DNS on 127.0.0.1:53, fills
the accept queue of `--blackhole` addresses, then runs the command, forwarding SIGTERM
and SIGINT (sent to its pid, printed as `ns-helper: pid N`: `unshare --fork` itself ignores
them), and exits with its code. Every DNS query is reported on stderr as
`ns-helper: dns query NAME` so a test can wait for it.

DNS modes: `silent` never answers (a resolver that hangs); `answer` gives the A records
of `--addresses` for `--name`, no AAAA record, NXDOMAIN for anything else.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from blackhole import Blackhole


def _question(packet: bytes) -> tuple[str, int, int]:
    """Name, type and the end offset of the first question of a DNS query."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype = struct.unpack("!H", packet[offset + 1:offset + 3])[0]
    return ".".join(labels).lower(), qtype, offset + 5


def _answer(packet: bytes, name: str, addresses: list[str]) -> bytes:
    qname, qtype, end = _question(packet)
    records = [a for a in addresses if qtype == 1] if qname == name else []
    rcode = 0 if qname == name else 3  # NXDOMAIN for other names
    flags = 0x8180 | rcode  # response, recursion desired and available
    header = packet[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(a) for a in records)
    return header + packet[12:end] + answers


def serve_dns(sock: socket.socket, mode: str, name: str, addresses: list[str]) -> None:
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            qname = _question(packet)[0]
        except (IndexError, struct.error):
            continue
        print(f"ns-helper: dns query {qname}", file=sys.stderr, flush=True)
        if mode == "answer":
            sock.sendto(_answer(packet, name, addresses), peer)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the helper dies, so a killed test leaves nothing behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--etc", required=True, type=Path, help="folder with resolv.conf, hosts, nsswitch.conf")
    parser.add_argument("--dns", choices=("silent", "answer"), required=True)
    parser.add_argument("--name", default="agent.test")
    parser.add_argument("--addresses", default="")
    parser.add_argument("--blackhole-port", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for name in ("resolv.conf", "hosts", "nsswitch.conf"):
        subprocess.run(["mount", "--bind", str(args.etc / name), f"/etc/{name}"], check=True)
    addresses = [a for a in args.addresses.split(",") if a]
    holes = [Blackhole(a, args.blackhole_port) for a in addresses] if args.blackhole_port else []
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 53))  # bound before the command starts: its first query is answered
    threading.Thread(target=serve_dns, args=(dns, args.dns, args.name, addresses), daemon=True).start()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    child = subprocess.Popen(command, preexec_fn=_die_with_parent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _: child.send_signal(s))
    # announced once a signal sent to it is forwarded: a test may send one as soon as it reads this
    print(f"ns-helper: pid {os.getpid()}", file=sys.stderr, flush=True)
    code = child.wait()
    for hole in holes:
        hole.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
