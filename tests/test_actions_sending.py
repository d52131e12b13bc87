"""chat.actions.sending and the command table, without a socket."""

from __future__ import annotations

import pytest

from chat import actions, protocol
from chat.actions import budget, sending
from chat.protocol import Address, ChatError, Send
from chat.ratelimit import MemoryRateLimiter, command_cost
from tests.actions_support import actor, bench  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_table_has_an_action_for_every_command_and_nothing_else():
    assert set(actions.COMMANDS) == set(protocol.COMMAND_CLASSES)


def test_parse_finds_the_entry_and_builds_the_typed_command():
    entry, command = actions.parse(
        {"type": "send", "to": {"user": "bob"}, "body": "hi", "ref": "1"}, max_body_chars=10
    )
    assert entry.act is sending.send
    assert command == Send(to=Address("user", "bob"), body="hi", ref="1")


def test_parse_refuses_an_unknown_type():
    with pytest.raises(ChatError) as info:
        actions.parse({"type": "shout"}, max_body_chars=10)
    assert info.value.code == protocol.BAD_COMMAND


async def test_send_stores_hands_the_message_to_delivery_and_acks(bench, alice, bob):  # noqa: F811
    reply = await sending.send(
        bench.services, actor(alice), Send(to=Address("user", "bob"), body="hi", cid="c1", ref="r")
    )
    assert reply["type"] == "ack" and reply["ref"] == "r" and reply["cid"] == "c1"
    [first] = await bench.parts.delivered_at_least(1)
    assert (first.id, first.user_ids, first.event["body"]) == (
        reply["id"],
        (alice.pk, bob.pk),
        "hi",
    )
    assert bench.outbox.told == []  # stored messages go to the hub through the send queue


@pytest.mark.parametrize(
    ("to", "code"),
    [
        (Address("user", "nobody"), protocol.NO_SUCH_USER),
        (Address("group", "G"), protocol.NOT_MEMBER),
    ],
)
async def test_send_without_an_audience_is_refused_and_stores_nothing(bench, alice, to, code):  # noqa: F811
    with pytest.raises(ChatError) as info:
        await sending.send(bench.services, actor(alice), Send(to=to, body="hi"))
    assert info.value.code == code
    assert bench.parts.delivered == []


async def test_spend_refuses_past_the_budget(bench, alice):  # noqa: F811
    bench.parts.rate_limiter = MemoryRateLimiter(burst=command_cost("send"), per_second=0.001)
    await budget.spend(bench.services, actor(alice), "send")
    with pytest.raises(ChatError) as info:
        await budget.spend(bench.services, actor(alice), "send")
    assert info.value.code == protocol.RATE_LIMITED
    assert "nothing was stored" in info.value.message
