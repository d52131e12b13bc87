"""Property tests: whatever a client sends, the answer is a well-formed event
and the socket stays open.

Each socket test opens one socket for the whole test and drives every
Hypothesis example through it on the test's event loop (pytest-asyncio runs
an async `@given` test's examples on that loop). Each example sends its frame
and then a `ping` with a fresh ref: the events that arrive before the `pong`
answer the frame.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chat import protocol
from tests.chatclient import ChatTestClient

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_CODES = protocol.ERROR_CODES
# Every event the server may send, with the fields it always carries.
EVENT_FIELDS = {
    "ack": {"id", "ts"},
    "error": {"code", "message"},
    "joined": {"group", "user"},
    "left": {"group", "user"},
    "history": {"of", "messages"},
    "sync": {"messages", "more"},
    "who": {"online"},
    "members": {"group", "members"},
    "pong": set(),
    "message": {"id", "from", "to", "body", "ts"},
    "presence": {"user", "online"},
}
COMMAND_TYPES = ["send", "join", "leave", "history", "sync", "who", "members", "ping"]

socket_examples = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ------------------------------------------------------------------

# Any code point, surrogates included: a str handed to the application in
# process may carry them even though UTF-8 on the wire cannot.
any_text = st.text(st.characters(blacklist_categories=()), max_size=120)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)
names = (
    st.sampled_from(["alice", "bob", "nobody", "", "A", "Fuzz", " A", "日本語", "x" * 65])
    | any_text
)
addresses = (
    st.fixed_dictionaries({"user": names})
    | st.fixed_dictionaries({"group": names})
    | st.just({"all": True})
    | json_values
)
# Values a server accepts, so that commands also get past validation.
valid_refs = st.text(max_size=64)
valid_groups = st.sampled_from(["A", "Fuzz", "日本語", "a b"]) | st.from_regex(
    r"[A-Za-z0-9_.-]{1,20}", fullmatch=True
)
valid_addresses = st.sampled_from([{"user": "alice"}, {"user": "bob"}, {"all": True}]) | (
    st.fixed_dictionaries({"group": valid_groups})
)
valid_bodies = st.text(min_size=1, max_size=60).filter(lambda b: b.strip() and "\x00" not in b)


def mostly(
    valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, anything)


any_command_fields: dict[str, st.SearchStrategy[Any]] = {
    "ref": st.text(max_size=70) | json_values,
    "to": addresses,
    "of": addresses,
    "body": st.text(max_size=60) | st.sampled_from(["", " ", "a\x00"]) | json_values,
    "group": names | json_values,
    "before": st.integers(min_value=-3, max_value=2**64) | json_values,
    "limit": st.integers(min_value=-3, max_value=120) | json_values,
    "since": st.integers(min_value=-3, max_value=2**64) | json_values,
}
mostly_valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "ref": mostly(valid_refs, any_command_fields["ref"]),
    "to": mostly(valid_addresses, addresses),
    "of": mostly(valid_addresses, addresses),
    "body": mostly(valid_bodies, any_command_fields["body"]),
    "group": mostly(valid_groups, any_command_fields["group"]),
    "before": mostly(st.integers(1, 10**6), any_command_fields["before"]),
    "limit": mostly(st.integers(1, 100), any_command_fields["limit"]),
    "since": mostly(st.integers(0, 10**6), any_command_fields["since"]),
}
NEEDS = {
    "send": ["to", "body"],
    "join": ["group"],
    "leave": ["group"],
    "members": ["group"],
    "history": ["of"],
    "sync": ["since"],
    "who": [],
    "ping": [],
}


def shaped_like(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A `kind` command with its fields, each mostly valid, plus optional extras."""
    needed = {field: mostly_valid_fields[field] for field in NEEDS[kind]}
    optional = {f: v for f, v in mostly_valid_fields.items() if f not in needed}
    return st.fixed_dictionaries({"type": st.just(kind), **needed}, optional=optional)


anything_shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(COMMAND_TYPES) | json_values}, optional=any_command_fields
)
commands = st.builds(
    lambda shaped, extra: {**extra, **shaped},
    st.one_of(*[shaped_like(kind) for kind in COMMAND_TYPES], anything_shaped),
    st.dictionaries(any_text, json_values, max_size=2),
)


# -- checks ----------------------------------------------------------------------


def assert_well_formed(event: Any) -> None:
    assert isinstance(event, dict), event
    kind = event.get("type")
    assert kind in EVENT_FIELDS, event
    assert EVENT_FIELDS[kind] <= event.keys(), event
    if kind == "error":
        assert event["code"] in ERROR_CODES, event
        assert isinstance(event["message"], str) and event["message"], event


async def answers_to(client: ChatTestClient, send_frame) -> list[dict[str, Any]]:
    """Send one frame, then a sync for nothing; every event that came before its reply.

    A read with a `ref` may be answered after later commands, but never
    after a later read: the sync is answered after whatever the frame caused.
    """
    await send_frame()
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    await client.send(type="sync", since=protocol.MAX_ID, ref=sentinel)
    await client.expect("sync", ref=sentinel)
    events = list(client.inbox)
    client.inbox.clear()
    assert not client.closed
    for answer in events:
        assert_well_formed(answer)
    return events


def answers_only(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers among `events`, without copies of messages sent earlier.

    The socket is its user's only one, so no `joined`/`left` notices reach it.
    """
    return [event for event in events if event["type"] != "message"]


@pytest.fixture
async def fuzz_socket(memory_layer, settings, connect, alice, bob):
    """One of alice's sockets that may misbehave without being closed or limited."""
    settings.CHAT_MAX_ERRORS_PER_MINUTE = 1_000_000
    settings.CHAT_RATE_BURST = 1_000_000
    return await connect(alice)


# -- the socket ------------------------------------------------------------------


@socket_examples
@given(text=any_text | st.text(st.sampled_from('{}[]":,0123456789.-eE truefalsn\\u'), max_size=80))
async def test_any_text_frame_gets_one_well_formed_answer(fuzz_socket, text):
    events = await answers_to(
        fuzz_socket,
        lambda: fuzz_socket.communicator.send_input({"type": "websocket.receive", "text": text}),
    )
    assert len(answers_only(events)) == 1, events


@socket_examples
@given(value=json_values)
async def test_any_json_value_gets_one_well_formed_answer(fuzz_socket, value):
    events = await answers_to(fuzz_socket, lambda: fuzz_socket.send_text(json.dumps(value)))
    answers = answers_only(events)
    assert len(answers) == 1, events
    if not isinstance(value, dict):
        assert answers[0]["code"] == protocol.BAD_JSON


@socket_examples
@given(command=commands)
async def test_any_command_shaped_object_gets_one_well_formed_answer(fuzz_socket, command):
    events = await answers_to(fuzz_socket, lambda: fuzz_socket.send_text(json.dumps(command)))
    answers = answers_only(events)
    assert len(answers) == 1, events
    event(answers[0].get("code", answers[0]["type"]))  # the mix, for --hypothesis-show-statistics
    ref = command.get("ref")
    if answers[0].get("code") == protocol.BAD_JSON:
        # Not decoded (a lone surrogate, a number beyond double): no ref to echo.
        assert "ref" not in answers[0]
    elif isinstance(ref, str) and len(ref) <= protocol.MAX_REF_CHARS:
        assert answers[0]["ref"] == ref, (command, answers)
    else:
        assert "ref" not in answers[0], (command, answers)


@socket_examples
@given(data=st.binary(max_size=64))
async def test_any_binary_frame_is_binary_not_supported(fuzz_socket, data):
    events = await answers_to(
        fuzz_socket,
        lambda: fuzz_socket.communicator.send_input({"type": "websocket.receive", "bytes": data}),
    )
    assert [e["code"] for e in answers_only(events)] == [protocol.BINARY_NOT_SUPPORTED]


# -- the protocol module alone (fast, so many more examples) ---------------------


@settings(max_examples=1000, deadline=None)
@given(command=commands)
def test_parse_command_returns_a_command_or_a_protocol_error(command):
    try:
        parsed = protocol.parse_command(command, max_body_chars=4000)
    except protocol.ChatError as error:
        assert error.code in ERROR_CODES
        assert error.message
    else:
        assert parsed.type in COMMAND_TYPES


@settings(max_examples=1000, deadline=None)
@given(text=any_text)
def test_decode_frame_returns_an_object_or_a_protocol_error(text):
    try:
        data = protocol.decode_frame(text, max_bytes=1024)
    except protocol.ChatError as error:
        assert error.code in (protocol.BAD_JSON, protocol.TOO_LARGE)
    else:
        assert isinstance(data, dict)
