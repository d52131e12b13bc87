"""Revoking a user's access closes their open sockets, on every worker.

A socket's session and user are checked once, at its handshake; the socket
then lives on. So whatever ends a user's right to be there tells every
worker, once the change is committed (a socket that reconnects meanwhile
would still see the old state):

- the user is deactivated (`is_active` turned off) or deleted, or their
  password changes: every socket of theirs closes with 1008
  (`AccessEnd`). After a password change, a session that kept its login
  (Django's `update_session_auth_hash`) simply reconnects; the others are
  refused.
- a session is deleted (a row of a database session engine, whoever deletes
  it): that session's sockets close with 1008 (`SessionEnd`, as on logout).
- a user logs out: that session's sockets close with 1008.
- `log_out_everywhere(user)` (the admin's "Log out everywhere" action)
  deletes every session of the user and closes all their sockets.
- a membership ends however it ends (the admin, a deleted group or user, any
  ORM delete, bulk ones included): every worker drops it from its index, the
  user's sockets get `left`, and so do the group's online members; `by` names
  who removed it when known (`memberships_ended_by`: the admin). A `leave`
  or `remove` announces its own (`ending_announced_by_caller`).

Without Redis, a change made in another process (`manage.py`, a shell)
reaches the worker through the database (`chat.delivery.relay`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.base_session import AbstractBaseSession
from django.core.exceptions import ObjectDoesNotExist
from django.db.models.signals import post_delete, pre_save
from django.utils import timezone

from chat.delivery.messages import LAYER_ALL, AccessEnd, Notices, SessionEnd, user_layer_group
from chat.delivery.publishing import membership_notice_pair
from chat.delivery.relay import publish_on_commit
from chat.delivery.sockets import session_digest
from chat.models import Membership

# The user fields whose change ends every session of the user.
_REVOKING_FIELDS = ("password", "is_active")


# Set while a caller that announces the end itself deletes a membership.
_announced_by_caller: ContextVar[bool] = ContextVar("chat_membership_announced", default=False)
# Who ends the memberships deleted meanwhile (an admin's username), for `left`'s `by`.
_ended_by: ContextVar[str | None] = ContextVar("chat_membership_ended_by", default=None)


def close_sockets_of_user(user_id: Any) -> None:
    """Close every socket of the user on every worker, once the transaction commits."""
    publish_on_commit([(user_layer_group(user_id), AccessEnd(user_id=user_id))])


@contextlib.contextmanager
def ending_announced_by_caller() -> Iterator[None]:
    """Memberships deleted inside are announced by the caller (a socket's `leave`)."""
    token = _announced_by_caller.set(True)
    try:
        yield
    finally:
        _announced_by_caller.reset(token)


@contextlib.contextmanager
def memberships_ended_by(username: str) -> Iterator[None]:
    """Memberships deleted inside were ended by `username` (the admin's removal,
    as the protocol's `remove`): their `left` carries `"by": username`."""
    token = _ended_by.set(username)
    try:
        yield
    finally:
        _ended_by.reset(token)


def log_out_everywhere(user: Any) -> int:
    """Delete every session of `user` and close all their sockets; the sessions deleted.

    Sessions cannot be looked up by user, so this reads every live session
    of the database engine (an admin's action, not a hot path). With an
    engine that cannot list its sessions (cache, signed cookies) only the
    sockets close; change the password to end those sessions.
    """
    engine = import_module(settings.SESSION_ENGINE).SessionStore
    deleted = 0
    if hasattr(engine, "get_model_class"):
        model = engine.get_model_class()
        owner = str(user.pk)
        live = model.objects.filter(expire_date__gt=timezone.now()).only(
            "session_key", "session_data"
        )
        for row in live.iterator():
            if row.get_decoded().get(SESSION_KEY) == owner:
                engine(row.session_key).delete()  # the cache too, for cached_db
                deleted += 1
    close_sockets_of_user(user.pk)
    return deleted


def note_revoking_change(sender: Any, instance: Any, raw: bool, **kwargs: Any) -> None:
    """`pre_save` of the user model: a deactivation or a new password revokes access."""
    update_fields = kwargs.get("update_fields")
    if raw or instance._state.adding or instance.pk is None:
        return
    fields = [f.name for f in sender._meta.concrete_fields if f.name in _REVOKING_FIELDS]
    if update_fields is not None:
        fields = [name for name in fields if name in update_fields]
    if not fields:
        return  # a login's `last_login`, say
    before = sender._default_manager.filter(pk=instance.pk).values(*fields).first()
    if before is None:
        return
    deactivated = before.get("is_active", False) and not getattr(instance, "is_active", True)
    new_password = "password" in before and before["password"] != instance.password
    if deactivated or new_password:
        close_sockets_of_user(instance.pk)


def note_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """`post_delete` of the user model."""
    close_sockets_of_user(instance.pk)


def note_session_deleted(sender: Any, instance: AbstractBaseSession, **kwargs: Any) -> None:
    """`post_delete` of the session model: that session's sockets close.

    Expired rows are skipped: `clearsessions` deletes them by the thousand,
    and their sockets were let in while the session was valid.
    """
    if instance.expire_date <= timezone.now():
        return
    user_id = instance.get_decoded().get(SESSION_KEY)
    if user_id is None:
        return
    try:
        pk = get_user_model()._meta.pk.to_python(user_id)
    except Exception:
        return
    end = SessionEnd(user_id=pk, session=session_digest(instance.session_key))
    publish_on_commit([(user_layer_group(pk), end)])


def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """`user_logged_out`: the sockets opened with that session close."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or session_key is None:
        return
    end = SessionEnd(user_id=user.pk, session=session_digest(session_key))
    publish_on_commit([(user_layer_group(user.pk), end)])


def note_membership_ended(sender: Any, instance: Membership, **kwargs: Any) -> None:
    """`post_delete` of a membership, one by one or in bulk: `left` for all concerned.

    The group and user rows of a cascade are deleted after their memberships,
    so their names are still there to read.
    """
    if _announced_by_caller.get():
        return
    try:
        username = instance.user.get_username()
        group = instance.group.name
    except ObjectDoesNotExist:
        return
    event = {"type": "left", "group": group, "user": username}
    by = _ended_by.get()
    if by is not None:
        event["by"] = by
    pair = membership_notice_pair(
        event,
        user_id=instance.user_id,
        group_id=instance.group_id,
        joined=False,
        exclude_connection=None,
    )
    publish_on_commit([(LAYER_ALL, Notices(pair))])


def connect_revocation_signals() -> None:
    """Connect the receivers above (from `ChatConfig.ready`)."""
    user_model = get_user_model()
    pre_save.connect(note_revoking_change, sender=user_model, dispatch_uid="chat-revoke-save")
    post_delete.connect(note_user_deleted, sender=user_model, dispatch_uid="chat-revoke-delete")
    post_delete.connect(
        note_membership_ended, sender=Membership, dispatch_uid="chat-membership-ended"
    )
    user_logged_out.connect(close_sockets_of_session, dispatch_uid="chat-revoke-logout")
    engine = import_module(settings.SESSION_ENGINE).SessionStore
    if hasattr(engine, "get_model_class"):
        post_delete.connect(
            note_session_deleted,
            sender=engine.get_model_class(),
            dispatch_uid="chat-revoke-session",
        )
