"""Logging out closes every socket opened with that session, on every worker."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from chat.delivery import session_digest
from chat.delivery.messages import SessionEnd, to_layer, user_layer_group

logger = logging.getLogger(__name__)


@receiver(user_logged_out)
def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    layer = get_channel_layer()
    if user is None or session_key is None or layer is None:
        return
    message = to_layer(SessionEnd(user_id=user.pk, session=session_digest(session_key)))
    try:
        async_to_sync(layer.group_send)(user_layer_group(user.pk), message)
    except Exception:
        logger.exception("could not tell workers to close the sockets of a logged-out session")
