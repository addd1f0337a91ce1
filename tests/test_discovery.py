"""Unit tests of discovery: INI and JSON discovery files merged with the configuration."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from replicante_poller.config import Config, PollSettings, TlsSettings, parse_config
from replicante_poller.limits import MAX_BODY
from replicante_poller.polling.discovery import Target, discover, discovery_files, looks_like_json_list
from replicante_poller.errors import ConfigError


def config(tmp_path: Path, text: str, extra: str = "") -> Config:
    text = textwrap.dedent(text) + textwrap.dedent(extra)
    return parse_config(text, source=str(tmp_path / "poller.ini"), base_dir=tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def keys(targets: tuple[Target, ...]) -> list[tuple[str, str]]:
    return [t.key for t in targets]


BASE = """
    [poller]
    interval = 20s
    timeout = 2s
    [discovery]
    files = d/*
"""


def test_no_discovery_files_gives_the_config_clusters(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
        [cluster:a]
        agents = https://a1:1, https://a2:1
        display_name = A
        [cluster:b]
        agents = https://b1:1
    """)
    targets = discover(cfg)
    assert keys(targets) == [("a", "https://a1:1"), ("a", "https://a2:1"), ("b", "https://b1:1")]
    a1 = targets[0]
    assert a1 == Target("a", "https://a1:1", "A", PollSettings(15.0, 5.0, MAX_BODY), TlsSettings())
    assert targets[2].display_name is None


def test_glob_matching_nothing_is_not_an_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, BASE)
    assert discovery_files(cfg) == []
    assert discover(cfg) == ()


def test_ini_discovery_file(tmp_path: Path) -> None:
    ca = write(tmp_path / "d" / "ca.pem", "x")
    write(tmp_path / "d" / "kafka.ini", """
        [cluster:kafka]
        agents = https://k1:9092, https://k2:9092
        display_name = Kafka
        interval = 1m
        ca_file = ca.pem
    """)
    cfg = config(tmp_path, BASE.replace("d/*", "d/*.ini"))
    targets = discover(cfg)
    assert keys(targets) == [("kafka", "https://k1:9092"), ("kafka", "https://k2:9092")]
    for target in targets:
        assert target.display_name == "Kafka"
        # the file's own overrides apply, on top of the global settings
        assert target.poll == PollSettings(60.0, 2.0, MAX_BODY)
        # relative paths in a discovery file resolve next to that file
        assert target.tls.ca_file == str(ca.resolve())


def test_json_discovery_file(tmp_path: Path) -> None:
    write(tmp_path / "d" / "fleet.json", json.dumps([
        {"cluster_id": "mongo-rs0", "display_name": "Mongo", "nodes": ["https://m1:37017", "https://m2:37017/"]},
        {"cluster_id": "zk", "display_name": None, "nodes": ["https://z1:1"]},
        {"cluster_id": "empty", "nodes": []},
        {"cluster_id": "nodisplay", "nodes": ["https://n:1"]},
    ]))
    cfg = config(tmp_path, BASE)
    targets = discover(cfg)
    assert keys(targets) == [
        ("mongo-rs0", "https://m1:37017"), ("mongo-rs0", "https://m2:37017"), ("zk", "https://z1:1"),
        ("nodisplay", "https://n:1"),
    ]
    assert [t.display_name for t in targets] == ["Mongo", "Mongo", None, None]
    assert all(t.poll == cfg.poller.poll and t.tls == cfg.tls for t in targets)


def test_json_detected_by_content_without_json_suffix(tmp_path: Path) -> None:
    write(tmp_path / "d" / "fleet.disc", '  \n [ {"cluster_id": "a", "nodes": ["https://a:1"]} ]')
    write(tmp_path / "d" / "empty.disc", "[ ]")
    assert keys(discover(config(tmp_path, BASE))) == [("a", "https://a:1")]


@pytest.mark.parametrize("text, expected", [
    ("[{", True), ("[]", True), ("  [ \n ]", True), ("[ {", True),
    ("[cluster:a]", False), ("", False), ("{}", False), ("[1]", False), ('["x"]', False),
])
def test_looks_like_json_list(text: str, expected: bool) -> None:
    assert looks_like_json_list(text) is expected


def test_globs_match_several_files_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "d" / "b.ini", "[cluster:b]\nagents = https://b:1\n")
    write(tmp_path / "d" / "a.json", json.dumps([{"cluster_id": "a", "nodes": ["https://a:1"]}]))
    write(tmp_path / "more" / "c.ini", "[cluster:c]\nagents = https://c:1\n")
    write(tmp_path / "more" / "ignored.txt", "not matched")
    cfg = config(tmp_path, f"""
        [discovery]
        files = d/*, more/*.ini, {tmp_path}/d/a.json
    """)
    assert [p.name for p in discovery_files(cfg)] == ["a.json", "b.ini", "c.ini"]
    assert keys(discover(cfg)) == [("a", "https://a:1"), ("b", "https://b:1"), ("c", "https://c:1")]


def test_merge_config_settings_win_and_agents_are_unioned(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.json", json.dumps([
        {"cluster_id": "a", "display_name": "from json", "nodes": ["https://a1:1", "https://a3:1"]},
    ]))
    write(tmp_path / "d" / "2.ini", """
        [cluster:a]
        agents = https://a3:1, https://a4:1
        display_name = from ini
        interval = 1h
        timeout = 1s
    """)
    cfg = config(tmp_path, BASE, """
        [cluster:a]
        agents = https://a1:1, https://a2:1
        display_name = from config
        interval = 30s
    """)
    targets = discover(cfg)
    assert keys(targets) == [("a", f"https://a{i}:1") for i in (1, 2, 3, 4)]
    configured = cfg.clusters[0]
    for target in targets:
        assert target.display_name == "from config"
        assert target.poll == configured.poll == PollSettings(30.0, 2.0, MAX_BODY)
        assert target.tls == configured.tls


def test_merge_keeps_discovered_display_name_when_config_has_none(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.json", json.dumps([{"cluster_id": "a", "display_name": "Named", "nodes": ["https://a2:1"]}]))
    cfg = config(tmp_path, BASE + "[cluster:a]\nagents = https://a1:1\ninterval = 30s\n")
    targets = discover(cfg)
    assert keys(targets) == [("a", "https://a1:1"), ("a", "https://a2:1")]
    # the discovered target gets the configured settings and the discovered name
    assert targets[1].poll.interval == 30.0
    assert targets[1].display_name == "Named"


def test_no_duplicate_targets(tmp_path: Path) -> None:
    write(tmp_path / "d" / "1.json", json.dumps([
        {"cluster_id": "a", "nodes": ["https://a1:1", "https://a2:1"]},
        {"cluster_id": "a", "nodes": ["https://a2:1/"]},
    ]))
    write(tmp_path / "d" / "2.ini", "[cluster:a]\nagents = https://a1:1\n[cluster:b]\nagents = https://b1:1\n")
    cfg = config(tmp_path, BASE + "[cluster:a]\nagents = https://a1:1\n")
    targets = discover(cfg)
    assert keys(targets) == [("a", "https://a1:1"), ("a", "https://a2:1"), ("b", "https://b1:1")]
    assert len(set(keys(targets))) == len(targets)


def test_one_agent_in_two_clusters_is_refused(tmp_path: Path) -> None:
    # issue 15: an agent manages one node of one cluster; a second cluster is a copy-paste mistake
    write(tmp_path / "d" / "2.ini", "[cluster:b]\nagents = https://a1:1/\n")
    cfg = config(tmp_path, BASE + "[cluster:a]\nagents = https://a1:1\n")
    with pytest.raises(ConfigError, match=r"2\.ini: \[cluster:b\] agents: agent https://a1:1 is also in cluster a"):
        discover(cfg)


def test_discovery_is_re_read_each_time(tmp_path: Path) -> None:
    path = write(tmp_path / "d" / "x.ini", "[cluster:a]\nagents = https://a1:1\n")
    cfg = config(tmp_path, BASE)
    assert keys(discover(cfg)) == [("a", "https://a1:1")]
    path.write_text("[cluster:a]\nagents = https://a2:1\n")
    assert keys(discover(cfg)) == [("a", "https://a2:1")]
    path.unlink()
    assert discover(cfg) == ()


def test_targets_are_hashable_values(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[cluster:a]\nagents = https://a1:1\n")
    assert discover(cfg) == discover(cfg)
    assert len({*discover(cfg), *discover(cfg)}) == 1


# --- invalid discovery files: a ConfigError naming the file ------------------------------


@pytest.mark.parametrize("name, text, section, key", [
    ("bad.json", '[{"cluster_id": "a", "nodes": ["https://a:1"]', None, None),
    ("bad.json", "", None, None),
    ("bad.json", "[cluster:a]\nagents = https://a:1\n", None, None),
    ("bad.json", '{"cluster_id": "a", "nodes": []}', None, None),
    ("bad.json", '"a"', None, None),
    ("bad.json", '[1]', "entry 0", "cluster_id"),
    ("bad.json", '[{"nodes": ["https://a:1"]}]', "entry 0", "cluster_id"),
    ("bad.json", '[{"cluster_id": 7, "nodes": []}]', "entry 0", "cluster_id"),
    ("bad.json", '[{"cluster_id": "a"}]', "entry 0", "nodes"),
    ("bad.json", '[{"cluster_id": "a", "nodes": "https://a:1"}]', "entry 0", "nodes"),
    ("bad.json", '[{"cluster_id": "a", "nodes": [1]}]', "entry 0", "nodes"),
    ("bad.json", '[{"cluster_id": "a", "nodes": []}, {"cluster_id": "b", "nodes": ["http://b:1"]}]', "entry 1", "nodes"),
    ("bad.json", '[{"cluster_id": "a", "nodes": ["https://a:1", "https://a:1"]}]', "entry 0", "nodes"),
    ("bad.json", '[{"cluster_id": "a", "display_name": 3, "nodes": []}]', "entry 0", "display_name"),
    ("bad.ini", "[cluster:a]\nagents = http://a:1\n", "cluster:a", "agents"),
    ("bad.ini", "[cluster:a]\nagents = https://a:1\nbogus = 1\n", "cluster:a", "bogus"),
    ("bad.ini", "[cluster:a]\nagents = https://a:1\nca_file = nope.pem\n", "cluster:a", "ca_file"),
    ("bad.ini", "[cluster:a]\nagents = https://a:1\ntimeout = 1m\n", "cluster:a", "timeout"),
    ("bad.ini", "[poller]\nworkers = 2\n", "poller", None),
    ("bad.ini", "[targets]\nagents = https://a:1\n", "targets", None),
    ("bad.ini", "[cluster:-x]\nagents = https://a:1\n", "cluster:-x", None),
    ("bad.ini", "agents = https://a:1\n", None, None),
    ("bad.ini", "[cluster:a]\n[cluster:a]\n", None, None),
    ("bad.yaml", "- cluster_id: a\n  nodes: [https://a:1\n", None, None),  # unclosed flow list
    ("bad.yaml", "cluster_id: a\nnodes: []\n", None, None),  # a mapping, not a list
    ("bad.yaml", "- cluster_id: yes\n  nodes: []\n", "entry 0", "cluster_id"),  # YAML 1.1: a boolean
    ("bad.yaml", "- cluster_id: a\n  nodes:\n    - {node_id: n1}\n", "entry 0", "nodes"),  # no agent_address
    ("bad.yaml", "- cluster_id: a\n  nodes: ['http://a:1']\n", "entry 0", "nodes"),  # agents speak HTTPS
])
def test_invalid_discovery_files(tmp_path: Path, name: str, text: str, section: str | None, key: str | None) -> None:
    write(tmp_path / "d" / "good.ini", "[cluster:ok]\nagents = https://ok:1\n")
    path = write(tmp_path / "d" / name, text)
    with pytest.raises(ConfigError) as info:
        discover(config(tmp_path, BASE))
    error = info.value
    assert error.source == str(path)
    assert (error.section, error.key) == (section, key)
    assert str(error).startswith(str(path) + ": ")
    assert "\n" not in str(error)


@pytest.mark.parametrize("cluster_id", ["", "a b", "-a", "a/b"])
def test_json_discovery_refuses_cluster_ids_the_ini_form_refuses(tmp_path: Path, cluster_id: str) -> None:
    # `[cluster:a b]` is refused in INI files; the same cluster id must not slip in via JSON.
    path = write(tmp_path / "d" / "x.json", json.dumps([{"cluster_id": cluster_id, "nodes": ["https://a:1"]}]))
    with pytest.raises(ConfigError) as info:
        discover(config(tmp_path, BASE))
    assert info.value.source == str(path)
    assert info.value.key == "cluster_id"


def test_unreadable_discovery_file(tmp_path: Path) -> None:
    path = tmp_path / "d" / "latin1.ini"
    path.parent.mkdir()
    path.write_bytes(b"[cluster:a]\ndisplay_name = caf\xe9\nagents = https://a:1\n")
    with pytest.raises(ConfigError) as info:
        discover(config(tmp_path, BASE))
    assert info.value.source == str(path)
    assert "cannot read" in str(info.value)


def test_folder_matched_by_glob(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        discover(config(tmp_path, BASE))
    assert info.value.source == str(tmp_path / "d" / "sub")


DATA = Path(__file__).parent / "data" / "core-discovery"


def test_core_yaml_discovery_files_are_read_as_core_reads_them(tmp_path: Path) -> None:
    # Core's fixtures are separate fleets (the same agents in two clusters): read one at a time
    for name in ("two.clusters.yaml", "no.clusters.yaml"):
        write(tmp_path / "d" / name, (DATA / name).read_text())
    write(tmp_path / "other" / "d" / "file.example.yaml", (DATA / "file.example.yaml").read_text())

    targets = discover(config(tmp_path / "other", BASE)) + discover(config(tmp_path, BASE))

    assert keys(targets) == [("mongodb-rs", "https://node1:37017"), ("mongodb-rs", "https://node2:37017"),
                             ("mongodb-rs", "https://node3:37017"), ("test1", "https://node1:37017"),
                             ("test1", "https://node2:37017"), ("test1", "https://node3:37017"),
                             ("test2", "https://node1:37018"), ("test2", "https://node3:37018")]
    test1 = [t for t in targets if t.cluster_id == "test1"]
    assert {t.display_name for t in test1} == {"Test One"}
    assert all(t.poll == PollSettings(20.0, 2.0, MAX_BODY) for t in targets)


def test_platform_discovery_records_give_their_agent_addresses(tmp_path: Path) -> None:
    write(tmp_path / "d" / "platform.json", (DATA / "platform-records.json").read_text())
    write(tmp_path / "d" / "platform.yml", "- cluster_id: zk\n  nodes:\n    - agent_address: https://zk1:9000\n"
                                            "      node_class: small\n      node_id: zk-1\n")

    assert keys(discover(config(tmp_path, BASE))) == [("kafka-prod", "https://kafka1.prod:9000"),
                                                      ("kafka-prod", "https://kafka2.prod:9000"),
                                                      ("zk", "https://zk1:9000")]


def test_an_empty_yaml_file_is_no_cluster(tmp_path: Path) -> None:
    write(tmp_path / "d" / "empty.yaml", "# nothing discovered yet\n")

    assert discover(config(tmp_path, BASE)) == ()
