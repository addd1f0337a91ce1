"""What a submission may carry (DESIGN section 7): kinds, and args every agent accepts.

Released legacy agents refuse schedule bodies over 32 KiB with an empty 413, so a too
large action is refused when it is submitted, with a message saying why, not at the agent.
"""
from __future__ import annotations

import json
import math

import pytest

from replicante_poller.actions.api import MAX_ARGS_BYTES, ActionsApi, check_kind, submit
from replicante_poller.actions.protocols import LegacyActions
from replicante_poller.actions.journal import Journal
from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.errors import SubmissionError
from replicante_poller.limits import MAX_ARGS_DEPTH, MAX_SCHEDULE_BODY
from replicante_poller.polling.discovery import Target

AGENT = "https://mongo1.test:37017"
TOKEN = b"a-token-of-at-least-16-characters"
TARGET = Target("rs", AGENT, None, PollSettings(), TlsSettings())


@pytest.fixture
def journal(tmp_path):
    opened = Journal(str(tmp_path / "actions.db"))
    yield opened
    opened.close()


def queue(journal, args, kind="agent.replicante.io/test.ping"):
    return submit(journal, lambda url: TARGET if url == AGENT else None, AGENT, kind, args)


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_args_that_fill_the_schedule_body_exactly_are_accepted(journal):
    args = "x" * (MAX_ARGS_BYTES - 2)  # a JSON string: two quotes
    action = queue(journal, args)

    assert len(LegacyActions().schedule(action)[1]) <= MAX_SCHEDULE_BODY


def test_args_one_byte_over_are_refused_with_the_reason(journal):
    with pytest.raises(SubmissionError, match=r"at most 32,6\d\d fit .*32 KiB schedule request"):
        queue(journal, "x" * (MAX_ARGS_BYTES - 1))
    assert journal.list() == []


@pytest.mark.parametrize("args", [math.nan, math.inf, -math.inf, {"ratio": math.nan}, [1, math.inf]])
def test_nan_and_infinity_are_refused(journal, args):
    with pytest.raises(SubmissionError, match="NaN or Infinity"):
        queue(journal, args)


def test_nesting_up_to_64_levels_is_accepted_and_deeper_refused(journal):
    queue(journal, nested(MAX_ARGS_DEPTH))
    with pytest.raises(SubmissionError, match="nested deeper than 64"):
        queue(journal, nested(MAX_ARGS_DEPTH + 1))


@pytest.mark.parametrize("kind", ["agent.replicante.io/test.ping", "agent.replicante.io/service.restart",
                                  "external.agent.replicante.io/my.custom.action",
                                  "external.agent.replicante.io/backup:full@nightly",
                                  "external.agent.replicante.io/Compact_DB-v2"])
def test_agent_and_external_kinds_are_accepted(kind):
    assert check_kind(kind) == kind


@pytest.mark.parametrize("kind", ["", "/agent.replicante.io/x", "agent.replicante.io/../x", "agent replicante",
                                  "external.agent.replicante.io/", "external.agent.replicante.io/a b",
                                  "external.agent.replicante.io/a?b", "external.agent.replicante.io/a#b",
                                  "external.agent.replicante.io/%2e%2e", None, 7])
def test_other_kinds_are_refused(kind):
    expected = "kind is required" if kind in (None, "") else "not a valid action kind"  # issue 15: no `None is not`
    with pytest.raises(SubmissionError, match=expected):
        check_kind(kind)


def test_the_api_answers_400_for_a_body_nested_too_deeply(journal):
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)

    status, document = api.post("Bearer " + TOKEN.decode(), b"[" * 100_000 + b"]" * 100_000)

    assert status == 400 and "error" in document


def test_the_api_refuses_oversized_args_with_400_and_queues_nothing(journal):
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)
    body = json.dumps({"agent": AGENT, "kind": "agent.replicante.io/test.ping", "args": "x" * 40_000}).encode()

    status, document = api.post("Bearer " + TOKEN.decode(), body)

    assert status == 400 and "32 KiB" in document["error"]
    assert journal.list() == []


def test_the_api_refuses_a_body_with_a_duplicate_key_and_queues_nothing(journal):
    """Two `agent` keys: json.loads kept the last one silently, so the action went to an
    agent a proxy or a reviewer reading the first one never saw."""
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)
    body = (b'{"agent": "https://other.test:37017", "agent": "' + AGENT.encode()
            + b'", "kind": "agent.replicante.io/test.ping"}')

    status, document = api.post("Bearer " + TOKEN.decode(), body)

    assert status == 400 and "duplicate key 'agent'" in document["error"], document
    assert journal.list() == []


def test_the_api_refuses_args_with_a_duplicate_key(journal):
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)
    body = b'{"agent": "' + AGENT.encode() + b'", "kind": "agent.replicante.io/test.ping", "args": {"n": 1, "n": 2}}'

    status, document = api.post("Bearer " + TOKEN.decode(), body)

    assert status == 400 and "duplicate key 'n'" in document["error"], document
    assert journal.list() == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive_as_http_says(journal, scheme):
    """RFC 9110 11.1: the scheme is case-insensitive; `bearer TOKEN` was a 401."""
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)

    status, document = api.get("/api/v1/actions", f"{scheme} {TOKEN.decode()}")

    assert status == 200, document


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic " + TOKEN.decode(),
                                           "Bearer " + TOKEN.decode()[:-1], "Bearer " + TOKEN.decode() + "x",
                                           "Bearer" + TOKEN.decode()])
def test_anything_but_the_token_is_401(journal, authorization):
    api = ActionsApi(journal, lambda url: TARGET, TOKEN, lambda: None)

    assert api.get("/api/v1/actions", authorization)[0] == 401
