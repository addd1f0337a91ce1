"""Issue 12, the confused deputy: an agent listed in a cluster that reports another node's
node_id. Reproduced with the real processes: agent-sim agents, the real service, and the real
node behind a verifying gateway process.

Half one: whoever reports a node id first no longer keeps it; every agent reporting it is
NODE_DOWN `duplicate_node` and gets no action. Half two: an action signed for the impostor
(while it was the only one reporting the id) and relayed unchanged to the real node's gateway
is refused there, because signing profile v2 binds it to the URL the poller dialed.
"""
from __future__ import annotations

import requests
import pytest

from replicante_poller.actions.journal import ActionState
from replicante_poller.actions.protocols import LegacyActions
from replicante_poller.agentsim import NodeSpec
from replicante_poller.reasons import Reason

from conftest import free_port
from harness import action_files, actions_config, all_polled
from process import PollerProcess

KIND = "agent.replicante.io/test.ping"


@pytest.fixture
def keys(tmp_path):
    return action_files(tmp_path)


@pytest.fixture
def real_node(tmp_path, start_sim, pki, keys):
    """The real node rs/node-1 behind a verifying gateway that answers for its own URL only."""
    sim = start_sim([NodeSpec("rs", "node-1")], action_seconds=0.05)
    (_, agent), = sim.agents
    port = free_port()
    front = f"https://localhost:{port}"
    config = tmp_path / "gateway.ini"
    config.write_text(f"[gateway]\nlisten = 127.0.0.1:{port}\nagent_urls = {front}\nupstream = {agent}\n"
                      f"upstream_ca_file = {pki['ca']}\nserver_cert = {pki['cert']}\nserver_key = {pki['key']}\n"
                      f"keys = {keys['pub']}\nreplay_store = {tmp_path / 'replay.db'}\n")
    gateway = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    yield {"sim": sim, "agent": agent, "front": front}
    assert gateway.stop() == 0


def test_an_impostor_and_the_real_node_are_both_node_down_and_get_no_action(real_node, start_sim, start_service,
                                                                             pki, keys):
    impostor_sim = start_sim([NodeSpec("rs", "node-1")])  # claims the real node's id
    (_, impostor), = impostor_sim.agents
    service = start_service(actions_config([("rs", real_node["front"]), ("rs", impostor)], pki, keys))
    all_polled(service)

    assert service.state.wait_for(lambda views: all(
        v.result and v.result.reason is Reason.DUPLICATE_NODE for v in views), 10), [
        (v.target.url, v.result.message) for v in service.snapshot()]
    action = service.journal.submit(impostor, KIND, None)
    assert service.journal.wait_for(action.id, lambda a: "waiting" in a.message, 10) is not None
    for view in service.snapshot():
        assert service.identity(view.target) is None  # what the dispatcher signs for: nothing
    assert service.journal.get(action.id).state is ActionState.PENDING
    assert impostor_sim.schedule_posts(impostor) == 0 and real_node["sim"].schedule_posts(real_node["agent"]) == 0


def test_an_action_signed_for_the_impostor_and_relayed_to_the_real_node_is_refused(real_node, start_sim,
                                                                                    start_service, pki, keys):
    impostor_sim = start_sim([NodeSpec("rs", "node-1")], action_seconds=0.05)
    (_, impostor), = impostor_sim.agents
    service = start_service(actions_config([("rs", impostor)], pki, keys))  # the real node missed its polls
    view, = all_polled(service)
    assert view.result.ok, view.result.message
    action = service.journal.submit(impostor, KIND, {"restart": True})
    assert service.journal.wait_for(action.id, lambda a: a.state.final, 15).state is ActionState.DONE

    stolen, = impostor_sim.actions(impostor)  # the signed headers the poller sent
    assert (stolen["headers"]["replicante-cluster"], stolen["headers"]["replicante-node"]) == ("rs", "node-1")
    path, body = LegacyActions().schedule(service.journal.get(action.id))  # the exact bytes it signed
    relayed = requests.post(real_node["front"] + path, data=body, headers={k: v for k, v in stolen["headers"].items()
                                                          if k.lower() not in ("host", "content-length")},
                            verify=str(pki["ca"]), timeout=5)

    assert relayed.status_code == 401, relayed.text
    assert real_node["sim"].actions(real_node["agent"]) == []
