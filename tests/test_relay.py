"""chat.delivery.relay: without Redis, layer messages written by other processes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer
from django.utils import timezone

from chat.delivery import relay
from chat.delivery.messages import AccessEnd, LayerMessage, to_layer
from chat.models import RelayedMessage

pytestmark = pytest.mark.django_db(transaction=True)


def written_by(origin: str, message: LayerMessage, *, age: timedelta = timedelta()) -> None:
    RelayedMessage.objects.create(
        origin=origin, message=to_layer(message), created=timezone.now() - age
    )


async def test_each_message_of_another_process_is_dispatched_once_and_its_own_never():
    got: list[LayerMessage] = []

    async def dispatch(message: LayerMessage) -> None:
        got.append(message)

    await sync_to_async(written_by)("before-start", AccessEnd(user_id=1), age=timedelta(seconds=1))
    reader = relay.RelayReader(dispatch)
    await sync_to_async(written_by)("manage.py-1", AccessEnd(user_id=2))
    await sync_to_async(written_by)(relay.PROCESS, AccessEnd(user_id=3))
    # A row it cannot read (a newer version's message, say) is skipped, not fatal.
    await sync_to_async(RelayedMessage.objects.create)(
        origin="manage.py-1", message={"type": "chat.unknown"}, created=timezone.now()
    )
    await sync_to_async(written_by)("manage.py-1", AccessEnd(user_id=4))

    await reader.poll()
    await reader.poll()

    assert got == [AccessEnd(user_id=2), AccessEnd(user_id=4)]


def test_only_an_in_memory_layer_is_relayed(settings):
    relay.relay_if_local(InMemoryChannelLayer(), AccessEnd(user_id=7))
    relay.relay_if_local(None, AccessEnd(user_id=8))

    rows = list(RelayedMessage.objects.values_list("origin", "message"))
    assert rows == [(relay.PROCESS, to_layer(AccessEnd(user_id=7)))]


def test_old_rows_are_deleted():
    written_by("gone", AccessEnd(user_id=1), age=relay.KEEP + timedelta(seconds=1))
    written_by("kept", AccessEnd(user_id=2))

    relay.relayed_forget_old()

    assert list(RelayedMessage.objects.values_list("origin", flat=True)) == ["kept"]
