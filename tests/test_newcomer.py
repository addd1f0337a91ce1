"""Issue 15, a newcomer's first hour (part): every INI block README.md and etc/ show loads as
written (inline `; comments` included), messages count right, and a CLI listing piped into
`head` ends quietly."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from replicante_poller.agentside.gateway_config import parse_gateway_config
from replicante_poller.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def ini_blocks() -> list[str]:
    return re.findall(r"```ini\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def with_files_in(block: str, folder: Path) -> str:
    """The block with every absolute path it names moved under `folder`, where a file now
    exists (the example's certificates, keys and stores are the operator's own)."""
    def move(match: re.Match) -> str:
        path = folder / match.group(0).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.suffix == ".db":
            path.touch()
        if path.suffix == ".key":  # private keys only their owner reads (refused otherwise)
            path.chmod(0o600)
        return str(path)
    return re.sub(r"(?<![\w:/])/(?:etc|var)/[\w./-]+", move, block)


@pytest.mark.parametrize("index", range(len(ini_blocks())))
def test_every_ini_block_of_the_readme_loads_as_written(index, tmp_path):
    block = ini_blocks()[index]
    text = with_files_in(block, tmp_path)
    if "[gateway]" in text:
        settings = parse_gateway_config(text, "README.md", tmp_path)
        assert settings.listen and settings.agent_urls
    else:
        parse_config(text, "README.md", tmp_path)


def test_the_shipped_configuration_and_discovery_files_load():
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "check-config", "--config",
                           str(ROOT / "etc" / "replicante-poller.ini")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_inline_comment_is_not_part_of_the_value(tmp_path):
    config = parse_config("[poller]\ninterval = 5s ; how often\ntimeout = 2s  # the deadline\n"
                          "[http]\nlisten = 127.0.0.1:9313 ; what Core polls\n", "x.ini", tmp_path)
    assert (config.poller.poll.interval, config.poller.poll.timeout, config.http.port) == (5.0, 2.0, 9313)


def test_one_agent_in_one_cluster_is_said_so(tmp_path, pki):
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = https://127.0.0.1:9\n")
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "1 agent in 1 cluster\n" in done.stdout, done.stdout


def test_a_listing_piped_into_head_ends_quietly(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = https://127.0.0.1:9\n"
                    f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n")
    from replicante_poller.actions.journal import Journal

    journal = Journal(str(keys["journal"]))
    for _ in range(1500):  # more than a pipe holds: the listing must write into a closed pipe
        journal.submit("https://127.0.0.1:9", "agent.replicante.io/test.ping", None)
    journal.close()
    cli = [sys.executable, "-m", "replicante_poller"]
    listing = subprocess.Popen(cli + ["action", "list", "--config", str(path), "--limit", "1500"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    assert listing.stdout is not None and listing.stdout.readline()
    listing.stdout.close()  # what `head -1` does once it has its line
    _, errors = listing.communicate(timeout=60)
    assert listing.returncode == 0 and "Broken pipe" not in errors, errors


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicante_poller", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 2 with one `error:` line naming each of `names`, no Python internals."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for name in names:
        assert name in errors[0], (name, done.stderr)
    assert "Traceback" not in done.stderr and "Errno" not in errors[0], done.stderr


def poller_ini(tmp_path: Path, pki: dict, extra: str = "") -> Path:
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = https://127.0.0.1:9\n{extra}")
    return path


def test_a_taken_listen_address_is_named_with_its_setting(tmp_path, pki):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = poller_ini(tmp_path, pki, f"[http]\nlisten = 127.0.0.1:{port}\n")
        done = cli("run", "--config", str(path))
    one_line_error(done, f"{path}: [http] listen: cannot listen on 127.0.0.1:{port}: address already in use")


def test_a_listen_host_that_does_not_resolve_fails_check_config_and_run(tmp_path, pki):
    path = poller_ini(tmp_path, pki, "[http]\nlisten = nohost.invalid:9305\n")
    for verb in ("check-config", "run"):
        one_line_error(cli(verb, "--config", str(path)), f"{path}: [http] listen: cannot listen on nohost.invalid:9305")


def test_an_ipv6_listen_address_serves(tmp_path, pki):
    import urllib.request

    from process import PollerProcess

    path = poller_ini(tmp_path, pki, "[http]\nlisten = [::1]:0\n")
    assert cli("check-config", "--config", str(path)).returncode == 0
    process = PollerProcess(path)
    try:
        assert process.address.startswith("[::1]:"), process.address  # logged as a URL writes it
        port = process.address.rpartition(":")[2]
        with urllib.request.urlopen(f"http://[::1]:{port}/-/healthy", timeout=10) as answer:
            assert answer.status == 200
    finally:
        process.stop()


def test_the_gateway_names_a_taken_listen_or_metrics_listen(tmp_path, pki):
    import socket

    from replicante_poller.actions.signing import generate_keypair

    generate_keypair(str(tmp_path / "core"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for key, other in (("listen", "metrics_listen"), ("metrics_listen", "listen")):
            path = tmp_path / "gateway.ini"
            path.write_text(f"[gateway]\n{key} = 127.0.0.1:{port}\n{other} = [::1]:0\n"
                            f"upstream = https://127.0.0.1:9\nupstream_ca_file = {pki['ca']}\n"
                            f"agent_urls = https://127.0.0.1:9\nkeys = {tmp_path / 'core.pub'}\n"
                            f"replay_store = {tmp_path / 'replay.db'}\ncluster_id = rs\nnode_id = n1\n")
            one_line_error(cli("gateway", "--config", str(path)),
                           f"{path}: [gateway] {key}: cannot listen on 127.0.0.1:{port}: address already in use")


def check_config(path: Path) -> subprocess.CompletedProcess:
    return cli("check-config", "--config", str(path))


def test_a_discovery_glob_matching_no_file_stops_check_config_and_run(tmp_path, pki):
    path = poller_ini(tmp_path, pki, "[discovery]\nfiles = discovery/*.jsn\n")
    for verb in ("check-config", "run"):
        one_line_error(cli(verb, "--config", str(path)), f"{path}: [discovery] files: ",
                       f"{tmp_path}/discovery/*.jsn matches no file")


def test_an_empty_agents_list_is_refused(tmp_path, pki):
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents =\n")
    one_line_error(check_config(path), f"{path}: [cluster:rs] agents: is empty")


def test_one_agent_in_two_clusters_is_refused_naming_both(tmp_path, pki):
    path = poller_ini(tmp_path, pki, "[cluster:other]\nagents = https://127.0.0.1:9\n")
    one_line_error(check_config(path), f"{path}: [cluster:other] agents: agent https://127.0.0.1:9 is also in cluster rs")
    (tmp_path / "d.json").write_text('[{"cluster_id": "kafka", "nodes": ["https://127.0.0.1:9/"]}]')
    path = poller_ini(tmp_path, pki, "[discovery]\nfiles = d.json\n")
    one_line_error(check_config(path), f"{tmp_path / 'd.json'}: [cluster:kafka] agents: ", "also in cluster rs")


def test_an_unknown_key_of_a_discovery_record_is_refused(tmp_path, pki):
    (tmp_path / "d.json").write_text('[{"cluster_id": "kafka", "node": ["https://127.0.0.1:10"]}]')
    path = poller_ini(tmp_path, pki, "[discovery]\nfiles = d.json\n")
    one_line_error(check_config(path), f"{tmp_path / 'd.json'}: ", " node: unknown key")


def test_an_interval_longer_than_a_day_is_refused_with_the_forms(tmp_path, pki):
    path = poller_ini(tmp_path, pki, "[poller]\ninterval = 99999999999h\n")
    one_line_error(check_config(path), f"{path}: [poller] interval: '99999999999h' is longer than a day", "15s, 2m, 500ms")


def test_a_signing_key_while_actions_are_off_is_refused(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    path = poller_ini(tmp_path, pki, f"[actions]\nsigning_key = {keys['key']}\n")
    one_line_error(check_config(path), f"{path}: [actions] signing_key: set while actions are disabled")


def test_an_agent_url_prefix_shows_in_the_404_message(tmp_path, pki, start_sim):
    import json

    from replicante_poller.agentsim import NodeSpec

    url = start_sim([NodeSpec("rs", "node-1")]).agents[0][1] + "/agent"
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = {url}\n")
    done = cli("poll", "--config", str(path), url)
    assert done.returncode == 1, done.stderr
    message = json.loads(done.stdout)["message"]
    assert f"GET {url}/api/" in message and "answered HTTP 404" in message, message


def test_an_unknown_key_of_a_submission_is_a_400_naming_it(tmp_path, pki, start_sim):
    import requests

    from harness import ACTIONS_TOKEN, action_files, actions_config
    from process import PollerProcess
    from replicante_poller.agentsim import NodeSpec

    url = start_sim([NodeSpec("rs", "node-1")]).agents[0][1]
    keys = action_files(tmp_path)
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", url)], pki, keys))
    process = PollerProcess(path)
    try:
        answer = requests.post(f"http://{process.address}/api/v1/actions", timeout=10,
                               json={"agent": url, "kind": "agent.replicante.io/test.ping", "arg": {"x": 1}},
                               headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"})
        assert answer.status_code == 400 and "unknown key 'arg'" in answer.json()["error"], answer.text
    finally:
        process.stop()


@pytest.mark.parametrize("section, key", [("tls", "client_key"), ("http", "tls_key_file")])
def test_a_tls_key_readable_by_others_is_refused_like_the_signing_key(tmp_path, pki, section, key):
    import shutil

    private = tmp_path / "k.key"
    shutil.copy(pki["key"], private)
    private.chmod(0o644)
    other = "client_cert" if key == "client_key" else "tls_cert_file"
    path = tmp_path / "poller.ini"
    path.write_text(f"[cluster:rs]\nagents = https://127.0.0.1:9\n[tls]\nca_file = {pki['ca']}\n"
                    + (f"[{section}]\n" if section != "tls" else "") + f"{other} = {pki['cert']}\n{key} = {private}\n")
    one_line_error(check_config(path), f"{path}: [{section}] {key}: {private} is readable by group or others (mode 0644)",
                   f"chmod 600 {private}")


@pytest.mark.parametrize("key", ["upstream_client_key", "server_key"])
def test_a_gateway_key_readable_by_others_is_refused(tmp_path, pki, key):
    import shutil

    from replicante_poller.actions.signing import generate_keypair

    generate_keypair(str(tmp_path / "core"))
    private = tmp_path / "k.key"
    shutil.copy(pki["key"], private)
    private.chmod(0o640)
    cert = "upstream_client_cert" if key == "upstream_client_key" else "server_cert"
    path = tmp_path / "gateway.ini"
    path.write_text(f"[gateway]\nlisten = 127.0.0.1:0\nupstream = https://127.0.0.1:9\nupstream_ca_file = {pki['ca']}\n"
                    f"agent_urls = https://127.0.0.1:9\nkeys = {tmp_path / 'core.pub'}\n"
                    f"replay_store = {tmp_path / 'replay.db'}\ncluster_id = rs\nnode_id = n1\n"
                    f"{cert} = {pki['cert']}\n{key} = {private}\n")
    one_line_error(cli("gateway", "--config", str(path)), f"{path}: [gateway] {key}: {private} is readable by group or others")


def test_a_public_key_as_signing_key_is_said_to_be_one(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    path = poller_ini(tmp_path, pki, f"[actions]\nenabled = true\nsigning_key = {keys['pub']}\njournal = {keys['journal']}\n")
    one_line_error(check_config(path), f"{path}: [actions] signing_key: {keys['pub']} is a public key")


def test_a_signing_key_readable_by_others_names_the_setting_and_action_submit_refuses_it(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    keys["key"].chmod(0o644)
    path = poller_ini(tmp_path, pki, f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n")
    for verb in (["check-config"], ["run"], ["action", "submit", "--agent", "https://127.0.0.1:9",
                                             "--kind", "agent.replicante.io/test.ping"]):
        one_line_error(cli(*verb, "--config", str(path)), f"{path}: [actions] signing_key: ", "chmod 600")
    assert not keys["journal"].exists()  # nothing journaled with a key run refuses


def test_action_submit_refuses_a_signing_key_run_refuses(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    keys["key"].write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    path = poller_ini(tmp_path, pki, f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n")
    for verb in (["run"], ["action", "submit", "--agent", "https://127.0.0.1:9", "--kind", "agent.replicante.io/test.ping"]):
        done = cli(*verb, "--config", str(path))
        assert done.returncode == 2 and str(keys["key"]) in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not keys["journal"].exists()


def test_a_bare_number_as_a_duration_says_which_forms_are_allowed():
    done = cli("demo", "--interval", "5")
    assert done.returncode == 2 and "--interval: '5' is not a duration (use forms like 15s, 2m, 500ms" in done.stderr, done.stderr
    assert "to_duration" not in done.stderr and "Traceback" not in done.stderr


def test_a_submission_without_a_kind_says_the_kind_is_required(tmp_path, pki):
    from harness import action_files

    keys = action_files(tmp_path)
    path = poller_ini(tmp_path, pki, f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n")
    done = cli("action", "submit", "--config", str(path), "--agent", "https://127.0.0.1:9", "--kind", "")
    one_line_error(done, "kind is required")
    assert "None" not in done.stderr


def test_a_bad_discovery_record_is_named_by_its_entry(tmp_path, pki):
    (tmp_path / "d.json").write_text('[{"cluster_id": "kafka", "nodes": [1]}]')
    path = poller_ini(tmp_path, pki, "[discovery]\nfiles = d.json\n")
    done = check_config(path)
    one_line_error(done, f"{tmp_path / 'd.json'}: [entry 0] nodes: expected a list of agent URLs")
    assert "[[" not in done.stderr


@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy", "/api/v1/targets"])
def test_head_answers_like_get_without_a_body(tmp_path, pki, path):
    import http.client

    from process import PollerProcess

    process = PollerProcess(poller_ini(tmp_path, pki, "[http]\nlisten = 127.0.0.1:0\n"))
    try:
        host, port = process.address.rsplit(":", 1)
        results = []
        for method in ("GET", "HEAD"):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request(method, path)
            answer = connection.getresponse()
            results.append((answer.status, answer.getheader("Content-Type"), answer.getheader("Content-Length"),
                            answer.read()))
            connection.close()
        (get_status, get_type, get_length, body), (head_status, head_type, head_length, nothing) = results
        assert get_status == head_status == 200 and head_type == get_type and nothing == b""
        assert path == "/metrics" or head_length == get_length == str(len(body))
        import socket

        with socket.create_connection((host, int(port)), timeout=10) as raw:  # nothing after the headers
            raw.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            received = b""
            while chunk := raw.recv(65536):
                received += chunk
        assert received.split(b" ", 1)[1].startswith(b"200 ") and received.endswith(b"\r\n\r\n"), received[-200:]
    finally:
        process.stop()


def test_the_readme_says_what_the_benchmark_needs_next_to_its_command():
    import configparser

    readme = (ROOT / "README.md").read_text()
    start = readme.index("`python benchmarks/bench.py`")
    said = " ".join(readme[start:start + 600].split())
    assert "pip install ." in said and "nginx" in said and "requests" in said and "trustme" in said, said
    imported = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        for plain, dotted in re.findall(r"^\s*(?:import (\w+)|from (\w+)[\w.]* import )", path.read_text(), re.M):
            imported.add(plain or dotted)
    local = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"replicante_poller", "__future__"}
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed = {re.split(r"[<>=\[ ]", line.strip())[0].lower()
                 for line in setup["options"]["install_requires"].splitlines() if line.strip()}
    third_party = {name for name in imported - local if name not in sys.stdlib_module_names}
    third_party -= {"certifi"}  # optional: counted when present (bench_clients), requests' own dependency
    assert third_party <= installed and third_party <= set(re.findall(r"`(\w+)`", said)), (third_party, installed)


@pytest.mark.parametrize("section, cert_key, key_key", [("tls", "client_cert", "client_key"),
                                                         ("http", "tls_cert_file", "tls_key_file")])
def test_a_key_that_does_not_match_its_certificate_names_the_files(tmp_path, pki, ca, section, cert_key, key_key):
    other = ca.issue_cert("other.test")
    key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    path = tmp_path / "poller.ini"
    path.write_text(f"[cluster:rs]\nagents = https://127.0.0.1:9\n[tls]\nca_file = {pki['ca']}\n"
                    + (f"[{section}]\n" if section != "tls" else "") + f"{cert_key} = {pki['cert']}\n{key_key} = {key}\n")
    done = check_config(path)
    one_line_error(done, f"{path}: [{section}]", str(key), str(pki["cert"]), "KEY_VALUES_MISMATCH")
    assert "_ssl.c" not in done.stderr


def test_a_gateway_server_key_that_does_not_match_its_certificate_names_the_files(tmp_path, pki, ca):
    from replicante_poller.actions.signing import generate_keypair

    generate_keypair(str(tmp_path / "core"))
    key = tmp_path / "other.key"
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    path = tmp_path / "gateway.ini"
    path.write_text(f"[gateway]\nlisten = 127.0.0.1:0\nupstream = https://127.0.0.1:9\nupstream_ca_file = {pki['ca']}\n"
                    f"agent_urls = https://127.0.0.1:9\nkeys = {tmp_path / 'core.pub'}\n"
                    f"replay_store = {tmp_path / 'replay.db'}\ncluster_id = rs\nnode_id = n1\n"
                    f"server_cert = {pki['cert']}\nserver_key = {key}\n")
    done = cli("gateway", "--config", str(path))
    one_line_error(done, f"{path}: [gateway] server_key: {key} cannot be used with server_cert {pki['cert']}",
                   "KEY_VALUES_MISMATCH")
    assert "_ssl.c" not in done.stderr


def test_a_signing_key_that_is_no_key_is_named_by_file_section_and_key(tmp_path, pki):
    """`signing_key` pointing at another 0600 file (the token) was `error: TOKEN: not an
    Ed25519 PKCS#8 private key`: neither the configuration nor `[actions] signing_key` named."""
    import requests

    from harness import action_files
    from process import PollerProcess

    keys = action_files(tmp_path)
    path = poller_ini(tmp_path, pki, f"[http]\nlisten = 127.0.0.1:0\n[actions]\nenabled = true\n"
                                     f"signing_key = {keys['token']}\njournal = {keys['journal']}\n")
    expected = f"{path}: [actions] signing_key: {keys['token']}: not an Ed25519 PKCS#8 private key"
    for verb in ("check-config", "run"):
        one_line_error(cli(verb, "--config", str(path)), expected)

    good = path.read_text().replace(f"signing_key = {keys['token']}", f"signing_key = {keys['key']}")
    path.write_text(good)
    process = PollerProcess(path)
    try:
        path.write_text(good.replace(f"signing_key = {keys['key']}", f"signing_key = {keys['token']}"))
        answer = requests.post(f"http://{process.address}/-/reload", timeout=10)
        assert answer.status_code == 500 and expected in answer.json()["message"], answer.text
    finally:
        process.stop()


@pytest.mark.parametrize("section", ["tls", "cluster:rs"])
def test_a_ca_file_that_holds_no_certificate_is_named_by_section_and_key(tmp_path, pki, section):
    """`ca_file` naming a file without a certificate was `[tls]: cannot load TLS material:
    [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)`: no key."""
    not_a_ca = tmp_path / "notes.txt"
    not_a_ca.write_text("not a certificate\n")
    path = tmp_path / "poller.ini"
    if section == "tls":
        path.write_text(f"[tls]\nca_file = {not_a_ca}\n[cluster:rs]\nagents = https://127.0.0.1:9\n")
    else:
        path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = https://127.0.0.1:9\nca_file = {not_a_ca}\n")
    for verb in ("check-config", "run"):
        done = cli(verb, "--config", str(path))
        one_line_error(done, f"{path}: [{section}] ca_file: cannot load TLS material: {not_a_ca}: no CA certificate in the file")
        assert "_ssl.c" not in done.stderr, done.stderr


def test_a_file_key_naming_a_directory_says_so(tmp_path, pki):
    """`ca_file = /etc/ssl/certs` (a folder of CAs) was `file /etc/ssl/certs does not exist`."""
    folder = tmp_path / "certs"
    folder.mkdir()
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {folder}\n[cluster:rs]\nagents = https://127.0.0.1:9\n")
    one_line_error(check_config(path), f"{path}: [tls] ca_file: {folder} is a folder, not a file")
    path.write_text(f"[tls]\nca_file = {tmp_path / 'absent.pem'}\n[cluster:rs]\nagents = https://127.0.0.1:9\n")
    one_line_error(check_config(path), f"{path}: [tls] ca_file: file {tmp_path / 'absent.pem'} does not exist")


def test_demo_options_that_cannot_work_are_named_as_options(tmp_path):
    """`demo --interval 500ms` was refused naming `/tmp/replicante-demo-XXXX/poller.ini:
    [poller] timeout`, a file the operator never wrote; `--listen` on a port in use did not
    name `--listen`."""
    import socket

    done = cli("demo", "--listen", "127.0.0.1:0", "--interval", "500ms", "--duration", "1s")
    one_line_error(done, "command line --interval: 500ms must be longer than --timeout (2s)")
    assert "poller.ini" not in done.stderr, done.stderr

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = cli("demo", "--listen", f"127.0.0.1:{port}", "--duration", "1s")
    one_line_error(done, f"command line --listen: cannot listen on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize("section, key", [("actions", "api_token_file"), ("discovery", "http_token_file")])
def test_a_token_file_others_can_read_is_named_with_the_configuration(tmp_path, pki, section, key):
    """It was `error: TOKEN: [actions] api_token_file: readable by group or others`: the token
    file where the configuration file goes, unlike every other key's error."""
    from harness import action_files

    keys = action_files(tmp_path)
    keys["token"].chmod(0o644)
    if section == "actions":
        extra = (f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n"
                 f"api_token_file = {keys['token']}\n")
    else:
        extra = f"[discovery]\nhttp = https://127.0.0.1:9/discover\nhttp_token_file = {keys['token']}\n"
    path = poller_ini(tmp_path, pki, extra)
    for verb in ("check-config", "run"):
        one_line_error(cli(verb, "--config", str(path)),
                       f"{path}: [{section}] {key}: {keys['token']}: readable by group or others; run: chmod 600")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_in_json_naming_the_allowed_ones(tmp_path, pki, method):
    from process import PollerProcess

    process = PollerProcess(poller_ini(tmp_path, pki, "[http]\nlisten = 127.0.0.1:0\n"))
    try:
        answer = requests.request(method, f"http://{process.address}/api/v1/targets", data=b"{}", timeout=10)
        assert answer.status_code == 405 and answer.headers["Allow"] == "GET, HEAD, POST", answer.text
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"error": f"{method} is not a method of this API: GET, HEAD or POST"}
        assert requests.get(f"http://{process.address}/-/healthy", timeout=10).status_code == 200  # still serving
    finally:
        process.stop()
