"""Issue 15, a newcomer's first hour (part): the gateway starts before its agent, asks it
until it answers, and says what it waits for in `/-/ready`, in words."""
from __future__ import annotations

import socket
import threading

import requests

from conftest import free_port
from process import PollerProcess
from replicante_poller.agentsim import NodeSpec
from test_gateway import gateway_config

REPRS = ("object at 0x", "Pool(", "Connection(", "Errno", "Traceback")


class Relay:
    """TCP from a fixed loopback port to another address: the agent "starts" on that port."""

    def __init__(self, port: int, target: tuple[str, int]):
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=10)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def test_the_gateway_starts_before_its_agent_and_says_so_in_ready(tmp_path, pki, start_sim):
    from replicante_poller.actions.signing import generate_keypair

    kid = generate_keypair(str(tmp_path / "core"))
    keys = {"old": {"pub": tmp_path / "core.pub", "kid": kid}}
    port = free_port()
    upstream = f"https://127.0.0.1:{port}"
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, upstream, pki, keys, trusted=("old",), revoked=(), extra="timeout = 1s\n")
                      .replace("revoked = \n", ""))
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    relay = None
    try:
        process.expect(rf"waiting for the agent at {upstream}: .*; asking again every 1s")
        ready = requests.get(f"http://{process.address}/-/ready", timeout=5)
        assert ready.status_code == 503 and ready.text.count("\n") == 1, ready.text
        assert ready.text.startswith(f"waiting for the agent at {upstream}: ") and "Connection refused" in ready.text
        post = requests.post(f"http://{process.address}/api/unstable/actions/schedule/agent.replicante.io/test.ping",
                             data=b"{}", timeout=5)
        assert post.status_code == 503 and post.headers["Retry-After"] == "1", post.text
        assert post.json()["error"] == ready.text.strip()

        sim = start_sim([NodeSpec("rs", "node-1")])
        relay = Relay(port, ("127.0.0.1", int(sim.agents[0][1].rsplit(":", 1)[1])))
        process.expect(rf"the agent at {upstream} answered \(cluster rs, node node-1\): ready")
        ready = requests.get(f"http://{process.address}/-/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.text == f"ready: forwarding to the agent at {upstream} (cluster rs, node node-1)\n"
        log = "".join(process.log)
        assert not [r for r in REPRS if r in log], log
    finally:
        assert process.stop() == 0
        if relay is not None:
            relay.close()


def test_a_keys_file_or_replay_store_that_cannot_be_used_is_named_by_file_section_and_key(tmp_path, pki):
    """`keys` naming a private key, or `replay_store` naming a file that is not SQLite, was
    `error: FILE: ...` without gateway.ini or the key; a SIGHUP with such `keys` logged the same."""
    import signal

    from replicante_poller.actions.signing import generate_keypair
    from test_newcomer import cli, one_line_error

    kid = generate_keypair(str(tmp_path / "core"))
    keys = {"old": {"pub": tmp_path / "core.pub", "kid": kid}}
    config = tmp_path / "gateway.ini"
    good = gateway_config(tmp_path, "https://127.0.0.1:9", pki, keys, trusted=("old",), revoked=(),
                          extra="cluster_id = rs\nnode_id = node-1\n").replace("revoked = \n", "")
    private = tmp_path / "core.key"
    config.write_text(good.replace(f"keys = {keys['old']['pub']}", f"keys = {private}"))
    one_line_error(cli("gateway", "--config", str(config)),
                   f"{config}: [gateway] keys: {private}: not an Ed25519 SubjectPublicKeyInfo public key")
    (tmp_path / "not-a-db").write_text("hello\n")
    config.write_text(good.replace(f"replay_store = {tmp_path / 'replay.db'}", f"replay_store = {tmp_path / 'not-a-db'}"))
    one_line_error(cli("gateway", "--config", str(config)),
                   f"{config}: [gateway] replay_store: {tmp_path / 'not-a-db'}: replay store: damaged")

    config.write_text(good)
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    try:
        config.write_text(good.replace(f"keys = {keys['old']['pub']}", f"keys = {private}"))
        process.proc.send_signal(signal.SIGHUP)
        process.expect(rf"gateway reload failed, keeping the running keyring: {config}: \[gateway\] keys: {private}: ")
    finally:
        assert process.stop() == 0


def test_an_upstream_ca_file_without_a_certificate_is_named_in_gateway_ini(tmp_path, pki):
    """It was `error: FILE: [tls]: cannot load TLS material: [X509: ...] (_ssl.c:4154)`:
    a section gateway.ini does not have, and neither gateway.ini nor upstream_ca_file."""
    from replicante_poller.actions.signing import generate_keypair
    from test_newcomer import cli, one_line_error

    kid = generate_keypair(str(tmp_path / "core"))
    not_a_ca = tmp_path / "notes.txt"
    not_a_ca.write_text("not a certificate\n")
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, "https://127.0.0.1:9", pki, {"old": {"pub": tmp_path / "core.pub", "kid": kid}},
                                     trusted=("old",), revoked=(), extra="cluster_id = rs\nnode_id = node-1\n")
                      .replace("revoked = \n", "").replace(f"upstream_ca_file = {pki['ca']}", f"upstream_ca_file = {not_a_ca}"))

    done = cli("gateway", "--config", str(config))

    one_line_error(done, f"{config}: [gateway] upstream_ca_file: cannot load TLS material: {not_a_ca}: no CA certificate in the file")
    assert "_ssl.c" not in done.stderr, done.stderr
