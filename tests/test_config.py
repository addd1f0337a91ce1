"""Unit tests of the INI configuration: parse_config, load_config and durations."""
from __future__ import annotations

import base64
import hashlib
import textwrap
from pathlib import Path

import pytest

from replicante_poller.limits import MAX_BODY, MAX_SHARDS_BODY
from replicante_poller.config import (
    Config,
    DiscoverySettings,
    PollerSettings,
    PollSettings,
    TlsSettings,
    load_config,
    parse_config,
)
from replicante_poller.durations import format_duration, parse_duration
from replicante_poller.errors import ConfigError, PollerError

SOURCE = "poller.ini"
PIN_A = "sha256//" + base64.b64encode(hashlib.sha256(b"a").digest()).decode()
PIN_B = "sha256//" + base64.b64encode(hashlib.sha256(b"b").digest()).decode()


def parse(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(textwrap.dedent(text), source=SOURCE, base_dir=base_dir)


def parse_error(text: str, base_dir: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    return info.value


def touch(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("-----BEGIN PLACEHOLDER-----\n")
    path.chmod(0o600)  # key files only their owner reads (refused otherwise)
    return path


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("15s", 15.0),
    ("2m", 120.0),
    ("500ms", 0.5),
    ("1h", 3600.0),
    ("1m30s", 90.0),
    ("1h2m3s", 3723.0),
    ("1.5s", 1.5),
    (" 15s ", 15.0),
    ("0s", 0.0),  # a duration; the configuration refuses it (see below), the parser does not
])
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "15", "-1s", "abc", "s", "15 s", "1m 30s", "15sec", "1d", "15s!", "+1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.5, 0.001, 1.0, 15.0, 90.0, 120.0, 3600.0, 7200.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text, seconds", [("15s", 15.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), ("1m30s", 90.0)])
def test_config_durations(text: str, seconds: float) -> None:
    config = parse(f"""
        [poller]
        interval = {text}
        timeout = 100ms
        [discovery]
        refresh = {text}
    """)
    assert config.poller.poll.interval == pytest.approx(seconds)
    assert config.discovery.refresh == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "-1s", "0s", "0ms", "abc"])
@pytest.mark.parametrize("section, key", [("poller", "interval"), ("poller", "timeout"), ("discovery", "refresh")])
def test_config_rejects_bad_durations(section: str, key: str, text: str) -> None:
    error = parse_error(f"""
        [{section}]
        {key} = {text}
    """)
    assert (error.source, error.section, error.key) == (SOURCE, section, key)
    assert str(error).startswith(f"{SOURCE}: [{section}] {key}: ")


# --- valid configurations ---------------------------------------------------------------


def test_defaults_of_an_empty_file() -> None:
    config = parse("")
    assert config.source == SOURCE
    assert config.poller.poll == PollSettings(interval=15.0, timeout=5.0, max_body=MAX_BODY)
    assert (config.poller.workers, config.poller.fall, config.poller.rise) == (16, 3, 2)
    assert config.poller.state_dir is None
    assert config.tls == TlsSettings(None, None, None, "1.2", frozenset())
    assert config.discovery == DiscoverySettings()
    assert config.discovery.files == () and config.discovery.refresh > 0
    # the parser's defaults are the dataclasses' defaults (they are written in two places)
    assert config.poller == PollerSettings()
    assert (config.http.host, config.http.port) == ("127.0.0.1", 9102)
    assert config.clusters == ()


def test_shipped_example_parses() -> None:
    example = Path(__file__).parent.parent / "etc" / "replicante-poller.ini"
    config = load_config(example)
    assert config.source == str(example)
    assert {c.cluster_id for c in config.clusters}


def test_empty_sections_give_defaults() -> None:
    assert parse("[poller]\n[tls]\n[discovery]\n[http]\n") == parse("")


def test_every_key(tmp_path: Path) -> None:
    ca, cert, key = (touch(tmp_path, n) for n in ("ca.pem", "client.pem", "client.key"))
    config = parse(f"""
        [poller]
        interval = 30s
        timeout = 2s
        max_body = 128KiB
        workers = 4
        fall = 5
        rise = 1
        state_dir = state

        [tls]
        ca_file = ca.pem
        client_cert = client.pem
        client_key = {key}
        min_version = 1.3
        pins = {PIN_A}, {PIN_B}

        [discovery]
        files = targets/*.ini, /etc/replicante/*.json
        refresh = 1m

        [http]
        listen = 0.0.0.0:9200

        [cluster:mongo-rs0]
        agents = https://mongo1:37017, https://mongo2:37017/
            https://mongo3:37017
        display_name = Mongo replica set
    """, base_dir=tmp_path)
    assert config.poller.poll == PollSettings(interval=30.0, timeout=2.0, max_body=128 * 1024)
    assert (config.poller.workers, config.poller.fall, config.poller.rise) == (4, 5, 1)
    assert config.poller.state_dir == str(tmp_path / "state")
    assert config.tls == TlsSettings(str(ca), str(cert), str(key), "1.3", frozenset({PIN_A, PIN_B}))
    assert config.discovery.files == (str(tmp_path / "targets/*.ini"), "/etc/replicante/*.json")
    assert config.discovery.refresh == 60.0
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9200)
    (cluster,) = config.clusters
    assert cluster.cluster_id == "mongo-rs0"
    assert cluster.agents == ("https://mongo1:37017", "https://mongo2:37017", "https://mongo3:37017")
    assert cluster.display_name == "Mongo replica set"
    assert cluster.poll == config.poller.poll
    assert cluster.tls == config.tls


def test_keys_are_case_insensitive_and_values_stripped() -> None:
    config = parse("""
        [poller]
        Interval =   20s
        WORKERS = 2
    """)
    assert config.poller.poll.interval == 20.0
    assert config.poller.workers == 2


@pytest.mark.parametrize("text, size", [("65536", 65536), ("64KiB", 65536), ("1MiB", 1 << 20), ("10B", 10)])
def test_max_body_sizes(text: str, size: int) -> None:
    assert parse(f"[poller]\nmax_body = {text}\n").poller.poll.max_body == size


def test_the_shards_answer_has_its_own_cap_with_a_default_for_large_brokers() -> None:
    config = parse("[poller]\nmax_body = 32KiB\n[cluster:kafka]\nagents = https://k1:1\nmax_shards_body = 32MiB\n"
                   "[cluster:mongo]\nagents = https://m1:1\n")
    assert config.poller.poll.max_shards_body == MAX_SHARDS_BODY == 8 << 20
    kafka, mongo = config.clusters
    assert (kafka.poll.max_body, kafka.poll.max_shards_body) == (32 << 10, 32 << 20)
    assert (mongo.poll.max_body, mongo.poll.max_shards_body) == (32 << 10, 8 << 20)


def test_the_listener_tls_files_go_together(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "key.pem").chmod(0o600)
    config = parse("[http]\ntls_cert_file = cert.pem\ntls_key_file = key.pem\ntls_client_ca_file = ca.pem\n",
                   base_dir=tmp_path)
    assert (config.http.tls, config.http.tls_client_ca_file) == (True, str(tmp_path / "ca.pem"))
    assert not parse("").http.tls
    assert_located(parse_error("[http]\ntls_cert_file = cert.pem\n", base_dir=tmp_path), "http", "tls_cert_file")
    assert_located(parse_error("[http]\ntls_client_ca_file = ca.pem\n", base_dir=tmp_path), "http", "tls_client_ca_file")


def test_the_agent_api_generation_is_auto_by_default_and_set_per_cluster() -> None:
    config = parse("[poller]\napi = Legacy\n[cluster:new]\nagents = https://m1:1\napi = replisdk\n"
                   "[cluster:old]\nagents = https://m2:1\n[cluster:any]\nagents = https://m3:1\napi = auto\n")
    assert parse("").poller.poll.api == "auto"
    assert config.poller.poll.api == "legacy"
    assert [c.poll.api for c in config.clusters] == ["replisdk", "legacy", "auto"]


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:9102", "127.0.0.1", 9102),
    ("localhost:0", "localhost", 0),
    (":9102", "0.0.0.0", 9102),
    ("[::1]:9102", "::1", 9102),
    ("[::]:80", "::", 80),
])
def test_listen_addresses(text: str, host: str, port: int) -> None:
    http = parse(f"[http]\nlisten = {text}\n").http
    assert (http.host, http.port) == (host, port)


def test_cluster_inherits_global_poll_and_tls(tmp_path: Path) -> None:
    ca = touch(tmp_path, "ca.pem")
    config = parse(f"""
        [poller]
        interval = 20s
        timeout = 3s
        [tls]
        ca_file = {ca}
        pins = {PIN_A}
        [cluster:a]
        agents = https://a1:1
    """)
    (cluster,) = config.clusters
    assert cluster.poll == PollSettings(20.0, 3.0, MAX_BODY)
    assert cluster.tls == TlsSettings(str(ca), None, None, "1.2", frozenset({PIN_A}))
    assert cluster.display_name is None


def test_cluster_overrides_poll_and_tls(tmp_path: Path) -> None:
    ca = touch(tmp_path, "ca.pem")
    other_ca = touch(tmp_path, "clusters/other-ca.pem")
    cert, key = touch(tmp_path, "c.pem"), touch(tmp_path, "c.key")
    config = parse(f"""
        [poller]
        interval = 20s
        timeout = 3s
        [tls]
        ca_file = {ca}
        [cluster:a]
        agents = https://a1:1
        [cluster:b]
        agents = https://b1:1
        interval = 1m
        timeout = 10s
        max_body = 1MiB
        ca_file = clusters/other-ca.pem
        client_cert = c.pem
        client_key = c.key
        min_version = 1.3
        pins = {PIN_B}
        display_name = B
        [cluster:c]
        agents = https://c1:1
        interval = 10s
    """, base_dir=tmp_path)
    a, b, c = config.clusters
    assert [x.cluster_id for x in config.clusters] == ["a", "b", "c"]
    assert a.poll == PollSettings(20.0, 3.0, MAX_BODY)
    assert a.tls.ca_file == str(ca)
    assert b.poll == PollSettings(60.0, 10.0, 1 << 20)
    assert b.tls == TlsSettings(str(other_ca), str(cert), str(key), "1.3", frozenset({PIN_B}))
    assert b.display_name == "B"
    # only interval overridden: timeout inherited
    assert c.poll == PollSettings(10.0, 3.0, MAX_BODY)
    assert c.tls == a.tls
    # the global settings are untouched by the overrides
    assert config.poller.poll == PollSettings(20.0, 3.0, MAX_BODY)
    assert config.tls.ca_file == str(ca)


def test_cluster_inherits_global_client_key_when_overriding_cert(tmp_path: Path) -> None:
    for name in ("c.pem", "c.key", "c2.pem"):
        touch(tmp_path, name)
    config = parse("""
        [tls]
        client_cert = c.pem
        client_key = c.key
        [cluster:x]
        agents = https://x:1
        client_cert = c2.pem
    """, base_dir=tmp_path)
    (cluster,) = config.clusters
    assert cluster.tls.client_cert == str(tmp_path / "c2.pem")
    assert cluster.tls.client_key == str(tmp_path / "c.key")


@pytest.mark.parametrize("cluster_id", ["a", "mongo-rs0", "kafka.prod_1", "zk:eu-west-1", "A9"])
def test_valid_cluster_ids(cluster_id: str) -> None:
    config = parse(f"[cluster:{cluster_id}]\nagents = https://h:1\n")
    assert config.clusters[0].cluster_id == cluster_id


def test_several_clusters_keep_file_order() -> None:
    config = parse("""
        [cluster:z]
        agents = https://z:1
        [cluster:a]
        agents = https://a:1
    """)
    assert [c.cluster_id for c in config.clusters] == ["z", "a"]


def test_same_agent_in_two_clusters_is_allowed() -> None:
    config = parse("""
        [cluster:a]
        agents = https://h:1
        [cluster:b]
        agents = https://h:1
    """)
    assert [c.agents for c in config.clusters] == [("https://h:1",), ("https://h:1",)]


def test_agent_url_forms() -> None:
    (cluster,) = parse("""
        [cluster:a]
        agents = https://mongo1:37017/, https://[::1]:8443, https://agent.example.com, https://h:1/prefix
    """).clusters
    assert cluster.agents == ("https://mongo1:37017", "https://[::1]:8443", "https://agent.example.com",
                              "https://h:1/prefix")


def test_config_is_frozen() -> None:
    config = parse("")
    with pytest.raises(AttributeError):
        config.poller = None  # type: ignore[misc]


# --- relative paths ---------------------------------------------------------------------


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    touch(tmp_path, "pki/ca.pem")
    config = parse("""
        [poller]
        state_dir = ./var/../state
        [tls]
        ca_file = pki/ca.pem
        [discovery]
        files = discovery/*.json
    """, base_dir=tmp_path)
    assert config.tls.ca_file == str((tmp_path / "pki/ca.pem").resolve())
    assert config.poller.state_dir == str((tmp_path / "state").resolve())
    assert config.discovery.files == (str(tmp_path / "discovery/*.json"),)


def test_absolute_paths_stay(tmp_path: Path) -> None:
    ca = touch(tmp_path, "ca.pem")
    config = parse(f"[tls]\nca_file = {ca}\n", base_dir=tmp_path / "elsewhere")
    assert config.tls.ca_file == str(ca)


def test_relative_paths_default_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "ca.pem")
    monkeypatch.chdir(tmp_path)
    assert parse("[tls]\nca_file = ca.pem\n").tls.ca_file == str((tmp_path / "ca.pem").resolve())


# --- errors: each names source, section and key -------------------------------------------


def assert_located(error: ConfigError, section: str | None, key: str | None) -> None:
    assert isinstance(error, PollerError) and isinstance(error, ValueError)
    assert (error.source, error.section, error.key) == (SOURCE, section, key)
    text = str(error)
    assert text.startswith(SOURCE + ": ")
    if section is not None:
        assert f"[{section}]" in text
    if key is not None:
        assert f"[{section}] {key}: " in text
    assert error.message and error.message in text
    assert "\n" not in text and "Traceback" not in text


@pytest.mark.parametrize("text, section, key", [
    # unknown keys
    ("[poller]\nintervall = 15s\n", "poller", "intervall"),
    ("[tls]\nca = x\n", "tls", "ca"),
    ("[discovery]\nfile = x\n", "discovery", "file"),
    ("[http]\naddress = :1\n", "http", "address"),
    ("[cluster:a]\nagents = https://a:1\nagent = https://b:1\n", "cluster:a", "agent"),
    ("[cluster:a]\nagents = https://a:1\nworkers = 3\n", "cluster:a", "workers"),
    # timeout >= interval
    ("[poller]\ninterval = 5s\ntimeout = 5s\n", "poller", "timeout"),
    ("[poller]\ninterval = 5s\ntimeout = 1m\n", "poller", "timeout"),
    ("[poller]\ninterval = 4s\n", "poller", "interval"),  # against the default timeout of 5s
    ("[poller]\ninterval = 10s\ntimeout = 5s\n[cluster:a]\nagents = https://a:1\ninterval = 3s\n", "cluster:a", "interval"),
    ("[poller]\ninterval = 10s\ntimeout = 5s\n[cluster:a]\nagents = https://a:1\ntimeout = 10s\n", "cluster:a", "timeout"),
    # whole numbers
    ("[poller]\nworkers = 0\n", "poller", "workers"),
    ("[poller]\nworkers = -3\n", "poller", "workers"),
    ("[poller]\nworkers = many\n", "poller", "workers"),
    ("[poller]\nworkers = 1.5\n", "poller", "workers"),
    ("[poller]\nfall = 0\n", "poller", "fall"),
    ("[poller]\nrise = 0\n", "poller", "rise"),
    ("[poller]\nmax_body = 0\n", "poller", "max_body"),
    ("[poller]\nmax_body = 64kb\n", "poller", "max_body"),
    # listen
    ("[http]\nlisten = localhost\n", "http", "listen"),
    ("[http]\nlisten = localhost:http\n", "http", "listen"),
    ("[http]\nlisten = 127.0.0.1:65536\n", "http", "listen"),
    ("[http]\nlisten = 127.0.0.1:-1\n", "http", "listen"),
    ("[http]\nlisten =\n", "http", "listen"),
    # agent URLs
    ("[cluster:a]\nagents = http://a:1\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = a:1\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://a:99999\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://a:1/?x=1\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://user:pw@a:1\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://a:1#frag\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://a:1, https://a:1\n", "cluster:a", "agents"),
    ("[cluster:a]\nagents = https://a:1, https://a:1/\n", "cluster:a", "agents"),
    ("[poller]\napi = v2\n", "poller", "api"),
    ("[http]\ntls_cert_file = missing.pem\n", "http", "tls_cert_file"),
    ("[cluster:a]\nagents = https://a:1\napi = replisdk-0.8\n", "cluster:a", "api"),
    # TLS values
    ("[tls]\nmin_version = 1.1\n", "tls", "min_version"),
    ("[tls]\nmin_version = TLSv1.3\n", "tls", "min_version"),
    ("[tls]\npins = sha256//tooshort=\n", "tls", "pins"),
    ("[tls]\npins = md5//" + "A" * 43 + "=\n", "tls", "pins"),
    ("[tls]\npins = " + PIN_A[len("sha256//"):] + "\n", "tls", "pins"),
    ("[tls]\npins = " + PIN_A + ", bogus\n", "tls", "pins"),
    ("[cluster:a]\nagents = https://a:1\npins = bogus\n", "cluster:a", "pins"),
    ("[cluster:a]\nagents = https://a:1\nmin_version = 1.0\n", "cluster:a", "min_version"),
    ("[tls]\nca_file = does-not-exist.pem\n", "tls", "ca_file"),
    ("[cluster:a]\nagents = https://a:1\nca_file = missing.pem\n", "cluster:a", "ca_file"),
    ("[tls]\nclient_cert = missing.pem\n", "tls", "client_cert"),
])
def test_wrong_values_are_located(text: str, section: str, key: str, tmp_path: Path) -> None:
    assert_located(parse_error(text, base_dir=tmp_path), section, key)


def test_missing_ca_file_names_the_resolved_path(tmp_path: Path) -> None:
    error = parse_error("[tls]\nca_file = pki/nope.pem\n", base_dir=tmp_path)
    assert_located(error, "tls", "ca_file")
    assert str(tmp_path / "pki" / "nope.pem") in str(error)


def test_ca_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    assert_located(parse_error("[tls]\nca_file = pki\n", base_dir=tmp_path), "tls", "ca_file")


@pytest.mark.parametrize("section", ["tls", "cluster:a"])
def test_client_cert_without_client_key(section: str, tmp_path: Path) -> None:
    touch(tmp_path, "c.pem")
    agents = "agents = https://a:1\n" if section.startswith("cluster:") else ""
    error = parse_error(f"[{section}]\n{agents}client_cert = c.pem\n", base_dir=tmp_path)
    assert_located(error, section, "client_cert")


def test_client_key_without_client_cert(tmp_path: Path) -> None:
    touch(tmp_path, "c.key")
    assert_located(parse_error("[tls]\nclient_key = c.key\n", base_dir=tmp_path), "tls", "client_cert")


@pytest.mark.parametrize("name", ["poll", "Poller", "DEFAULT", "actionz", "cluster", "clusters:a", "gatewayy"])
def test_unknown_section(name: str) -> None:
    error = parse_error(f"[{name}]\nx = 1\n")
    assert_located(error, name, None)
    assert "unknown section" in str(error)


@pytest.mark.parametrize("cluster_id", ["", "-a", ".a", "a b", "a/b", "é"])
def test_bad_cluster_id(cluster_id: str) -> None:
    error = parse_error(f"[cluster:{cluster_id}]\nagents = https://a:1\n")
    assert_located(error, f"cluster:{cluster_id}", None)
    assert repr(cluster_id) in str(error)


@pytest.mark.parametrize("text", [
    "interval = 15s\n",  # a key before any section
    "[poller\ninterval = 15s\n",
    "[poller]\ninterval = 15s\ninterval = 20s\n",  # duplicate key
    "[poller]\n[poller]\n",  # duplicate section
    "[poller]\njust a line\n",
    "[cluster:a]\nagents = https://a:1\n[cluster:a]\nagents = https://b:1\n",
])
def test_ini_syntax_errors(text: str) -> None:
    error = parse_error(text)
    assert_located(error, None, None)
    assert len(str(error)) > len(SOURCE) + 2


def test_first_unknown_key_is_named() -> None:
    error = parse_error("[poller]\nzeta = 1\nalpha = 2\n")
    assert_located(error, "poller", "alpha")


def test_wrong_value_message_quotes_the_value() -> None:
    error = parse_error("[poller]\ninterval = fortnight\n")
    assert "'fortnight'" in str(error)


# --- load_config ------------------------------------------------------------------------


def test_load_config_reads_a_file_and_resolves_next_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    touch(folder, "ca.pem")
    path = folder / "poller.ini"
    path.write_text("[poller]\nworkers = 3\n[tls]\nca_file = ca.pem\n[cluster:a]\nagents = https://a:1\n")
    monkeypatch.chdir(tmp_path)  # relative paths follow the file, not the working directory
    config = load_config(path)
    assert config.source == str(path)
    assert config.poller.workers == 3
    assert config.tls.ca_file == str((folder / "ca.pem").resolve())
    assert config.clusters[0].agents == ("https://a:1",)


def test_load_config_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p.ini").write_text("[discovery]\nfiles = d/*.ini\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("p.ini")
    assert config.source == "p.ini"
    assert config.discovery.files == (str(tmp_path.resolve() / "d/*.ini"),)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "poller.ini"
    path.write_text("[poller]\nworkers = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.source, info.value.section, info.value.key) == (str(path), "poller", "workers")
    assert str(info.value).startswith(f"{path}: [poller] workers: ")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.source, error.section, error.key) == (str(path), None, None)
    assert str(error).startswith(f"{path}: cannot read")
    assert "\n" not in str(error)
    assert error.__cause__ is None and error.__suppress_context__


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.ini"
    path.write_bytes("[cluster:a]\ndisplay_name = caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)


def test_load_config_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.source == str(tmp_path)
