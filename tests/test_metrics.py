"""/metrics: off without a token, refused with a wrong one, and counting what happens."""

from __future__ import annotations

import pytest
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from chat import protocol
from chat.ratelimit import command_cost

TOKEN = "metrics-token-for-the-tests"


async def scrape(token: str = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by (name, labels)."""
    response = await AsyncClient().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_on(settings):
    settings.CHAT_METRICS_TOKEN = TOKEN


@pytest.mark.django_db
async def test_metrics_are_not_found_while_no_token_is_set(settings):
    settings.CHAT_METRICS_TOKEN = ""
    response = await AsyncClient().get("/metrics", headers={"Authorization": "Bearer "})
    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"{TOKEN}"])
async def test_metrics_refuse_a_scraper_without_the_token(metrics_on, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = await AsyncClient().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


async def test_metrics_count_sockets_messages_deliveries_errors_and_closes(
    layer, metrics_on, connect, settings, alice, bob
):
    before = await scrape()
    alice1, bob1 = await connect(alice), await connect(bob)
    opened = await scrape()
    assert value(opened, "chat_open_sockets", endpoint="json") == (
        value(before, "chat_open_sockets", endpoint="json") + 2
    )

    ack = await alice1.request(type="send", to={"all": True}, body="counted")
    await bob1.expect("message", id=ack["id"])
    await alice1.expect("message", id=ack["id"])
    error = await alice1.request(type="send", to={"user": "nobody-here"}, body="x")
    assert error["type"] == "error"
    after = await scrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("chat_messages_stored_total") == 1
    assert grew("chat_messages_delivered_total") == 2  # alice's socket and bob's
    assert grew("chat_frames_delivered_total") == 2
    assert grew("chat_delivery_latency_seconds_count") == 1
    assert grew("chat_delivery_latency_seconds_bucket", le="+Inf") == 1
    assert 0 < grew("chat_delivery_latency_seconds_sum") < 5
    assert grew("chat_errors_total", code=error["code"]) == 1
    assert value(after, "chat_up", dependency="database") == 1
    assert value(after, "chat_up", dependency="channel_layer") == 1
    assert value(after, "chat_send_queue_depth") == 0

    await bob1.close()
    await alice1.expect("presence", user="bob", online=False)
    closed = await scrape()
    assert value(closed, "chat_open_sockets", endpoint="json") == (
        value(before, "chat_open_sockets", endpoint="json") + 1
    )
    assert value(closed, "chat_sockets_closed_total", code="1000") > value(
        before, "chat_sockets_closed_total", code="1000"
    )


async def test_metrics_count_rate_limited_commands_by_command(
    layer, metrics_on, connect, settings, alice
):
    settings.CHAT_RATE_BURST = command_cost("connect") + 1  # the socket, then one ping
    settings.CHAT_RATE_PER_SECOND = 0.001
    client = await connect(alice)
    before = await scrape()
    await client.request(type="ping")
    refused = await client.request(type="ping")
    assert refused["code"] == protocol.RATE_LIMITED
    after = await scrape()
    assert value(after, "chat_rate_limited_commands_total", command="ping") == (
        value(before, "chat_rate_limited_commands_total", command="ping") + 1
    )


async def test_close_codes_clients_choose_are_counted_under_other(
    layer, metrics_on, connect, alice
):
    """The attack: every close code 3000-4999 a client picks became a series of its own."""
    before = await scrape()
    chosen = (3000, 3999, 4000, 4321, 4999, 1000)
    for code in chosen:
        client = await connect(alice)
        client.closed = True
        # Returns once the consumer's disconnect has run, counted close included.
        await client.communicator.disconnect(code=code)

    after = await scrape()

    labels = {dict(labels)["code"] for name, labels in after if name == "chat_sockets_closed_total"}
    assert not labels & {str(code) for code in chosen[:-1]}, labels
    assert value(after, "chat_sockets_closed_total", code="other") == (
        value(before, "chat_sockets_closed_total", code="other") + 5
    )
    assert value(after, "chat_sockets_closed_total", code="1000") == (
        value(before, "chat_sockets_closed_total", code="1000") + 1
    )
