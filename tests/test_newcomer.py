"""Issue 15, a newcomer's first hour (part): every INI block README.md and etc/ show loads as
written (inline `; comments` included), messages count right, and a CLI listing piped into
`head` ends quietly."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
