"""chat.delivery.messages: every layer message survives the trip through the layer's dict."""

from __future__ import annotations

import msgpack
import pytest

from chat.delivery.messages import (
    AccessEnd,
    Audience,
    Deliver,
    MemberChange,
    Notice,
    Notices,
    Renamed,
    SessionEnd,
    Typing,
    UnknownMessage,
    from_layer,
    presence_notice,
    to_layer,
)

joined = Notice(
    {"type": "joined", "group": "A", "user": "carol"},
    Audience(users=(3,), exclude_connection="c-1"),
    member_change=MemberChange(user_id=3, group_id=7, joined=True),
)

EVERY_KIND = [
    Deliver.of([{"type": "message"}], Audience(everyone=True), origin="chatworker.abc"),
    Deliver.of([{"type": "message", "id": 1}, {"type": "message", "id": 2}], Audience(group=7)),
    Deliver.of([{"type": "read", "id": 3}], Audience(users=(1, 2))),
    presence_notice("alice", online=True),
    Notice({"type": "left", "group": "A", "user": "bob"}, Audience(group=7, exclude_user=2)),
    joined,
    Notices((presence_notice("alice", online=False), joined)),
    SessionEnd(user_id=1, session="0" * 32),
    AccessEnd(user_id=1),
    Typing({"type": "typing", "user": "alice"}, "bob"),
    Renamed(username="alice", name="Alice L."),
    presence_notice("dave", online=True, name="Dave"),
    presence_notice("carol", online=False, last_seen="2026-12-04T23:00:00.000Z"),
]


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: m.type)
def test_a_message_comes_back_from_the_layer_equal(message):
    # msgpack is what channels_redis puts on the wire: lists for tuples.
    wire = msgpack.unpackb(msgpack.packb(to_layer(message)))

    assert from_layer(wire) == message


def test_the_layer_dict_keeps_the_keys_of_earlier_versions():
    """Workers of two versions share one Redis while a deployment rolls."""
    assert to_layer(Deliver.of([{"type": "message"}], Audience(group=7), origin="o")) == {
        "type": "chat.deliver",
        "text": '{"type":"message"}',
        "events": ({"type": "message"},),
        "group": 7,
        "origin": "o",
    }
    assert to_layer(presence_notice("alice", online=True)) == {
        "type": "chat.notice",
        "event": {"type": "presence", "user": "alice", "online": True, "name": "alice"},
        "all": True,
        "exclude_username": "alice",
        "presence": "alice",
    }


def test_messages_from_a_worker_of_the_previous_version_still_read():
    """Before the events travelled, a `Deliver` and a `Typing` carried text only."""
    batch = '{"type":"batch","events":[{"type":"message","id":1},{"type":"message","id":2}]}'
    old = from_layer({"type": "chat.deliver", "text": batch, "all": True})
    typing = from_layer({"type": "chat.typing", "text": '{"type":"typing"}', "username": "bob"})

    assert isinstance(old, Deliver) and old.text == batch
    assert old.events == ({"type": "message", "id": 1}, {"type": "message", "id": 2})
    assert isinstance(typing, Typing) and typing.event == {"type": "typing"}


def test_a_type_nobody_registered_is_refused_by_name():
    with pytest.raises(UnknownMessage, match=r"chat\.future"):
        from_layer({"type": "chat.future", "x": 1})
