"""Issue 15, a newcomer's first hour (part): no Python repr of a connection or pool in what
an operator reads (urllib3 and requests put them at the front of their messages)."""
from __future__ import annotations

import pytest
import requests

from replicante_poller.polling.transport import classify
from test_newcomer import check_config, one_line_error, poller_ini

REPRS = ("object at 0x", "Pool(", "Connection(", "Errno")


def plain(text: str) -> None:
    assert not [r for r in REPRS if r in text], text


@pytest.mark.parametrize("server, said", [("127.0.0.1:9", "connection failed: Connection refused (127.0.0.1:9)"),
                                          ("[::1]:9", "connection failed: Connection refused ([::1]:9)"),
                                          ("nohost.invalid:9", "name resolution of nohost.invalid failed: ")])
def test_an_unreachable_http_discovery_is_one_plain_line(tmp_path, pki, server, said):
    path = poller_ini(tmp_path, pki, f"[discovery]\nhttp = https://{server}/discover\n")
    done = check_config(path)
    one_line_error(done, f"https://{server}/discover: [page 1]: HTTP discovery failed: {said}")
    plain(done.stderr)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "http://nohost.invalid:9/"])
def test_a_requests_failure_is_classified_without_reprs(url):
    with pytest.raises(requests.RequestException) as raised:
        requests.get(url, timeout=5)
    failure = classify(raised.value)
    assert failure is not None
    plain(failure.message)


@pytest.mark.parametrize("verb", ["check-config", "run", "gateway"])
def test_a_configuration_that_cannot_be_read_is_said_in_words(tmp_path, verb):
    from test_newcomer import cli

    for path, said in ((tmp_path / "absent.ini", "no such file or directory"), (tmp_path, "is a directory")):
        done = cli(verb, "--config", str(path))
        one_line_error(done, f"{path}: cannot read: {said}")
        plain(done.stderr)


def test_a_discovery_file_that_cannot_be_read_is_said_in_words(tmp_path, pki):
    (tmp_path / "d.json").mkdir()  # matches the glob, cannot be read as a file
    path = poller_ini(tmp_path, pki, "[discovery]\nfiles = d.json\n")
    done = check_config(path)
    one_line_error(done, f"{tmp_path / 'd.json'}: cannot read: is a directory")
    plain(done.stderr)


@pytest.mark.parametrize("generation", ["legacy", "replisdk"])
def test_a_client_certificate_required_and_not_sent_is_tls_handshake_without_ssl_c(tmp_path, pki, start_sim, generation):
    """A replisdk agent (TLS 1.3) that requires a client certificate closes the connection
    after the handshake: the message was `TLS failed: EOF occurred in violation of protocol
    (_ssl.c:2427)`, CPython's source line on the status page."""
    import json

    from replicante_poller.agentsim import NodeSpec
    from test_newcomer import cli

    url = start_sim([NodeSpec("rs", "node-1", generation=generation)], client_ca=pki["ca"]).agents[0][1]
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = {url}\n")

    done = cli("poll", "--config", str(path), url)

    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["reason"]) == ("AGENT_DOWN", "tls_handshake"), result
    assert result["message"].startswith("GET /api/unstable/info/") and "TLS failed: " in result["message"], result
    assert "_ssl.c" not in result["message"], result["message"]
    plain(result["message"])


@pytest.mark.parametrize("verb", ["check-config", "run"])
def test_an_http_discovery_ca_file_without_a_certificate_is_named_not_blamed_on_the_server(tmp_path, pki, verb):
    """`http_ca_file` naming a file without a certificate was `https://SERVER/discover: [page 1]:
    HTTP discovery failed: TLS failed: NO_CERTIFICATE_OR_CRL_FOUND`: the server's fault, to read
    it, and at run time the same failure at every refresh; the configuration went unnamed."""
    from test_newcomer import cli

    not_a_ca = tmp_path / "notes.txt"
    not_a_ca.write_text("not a certificate\n")
    path = poller_ini(tmp_path, pki, f"[discovery]\nhttp = https://127.0.0.1:9/discover\nhttp_ca_file = {not_a_ca}\n")

    one_line_error(cli(verb, "--config", str(path)),
                   f"{path}: [discovery] http_ca_file: cannot load TLS material: {not_a_ca}: no CA certificate in the file")
