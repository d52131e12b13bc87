"""Stored state of the chat: groups, memberships, messages, live connections."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from chat.lookalikes import group_skeleton, new_group_name_refusal


def group_key(name: str) -> str:
    """What makes two group names the same group: their case-folded form."""
    return name.casefold()


class ChatGroup(models.Model):
    """A named group; it comes into being when someone first joins it.

    Names are unique ignoring case (`key`); `name` keeps the creator's spelling.
    """

    name = models.CharField(max_length=64, unique=True)
    # Case folding can lengthen a name (ß becomes ss): room for three times 64.
    key = models.CharField(max_length=192, unique=True)
    # `chat.lookalikes.group_skeleton` of the name: no two groups look alike.
    # Null only for a look-alike made before the rule (migration 0010): unique
    # allows many nulls, and no empty string would.
    skeleton = models.CharField(  # noqa: DJ001
        max_length=1000, unique=True, null=True, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Protocol 1.2: listed and joinable only by its members; others join by invitation.
    private = models.BooleanField(default=False, db_default=False)
    # Made with `create` (1.2): its last owner names another before leaving
    # (`last_owner`). A group that came into being by a `join` (1.0's way, and
    # every group made before roles) passes ownership on instead, so a client
    # that knows nothing of roles can always leave.
    owners_hand_over = models.BooleanField(default=False, db_default=False)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="chat_groups"
    )

    class Meta:
        ordering = ["name"]
        # "chat group": the admin also lists Django's permission groups as "Groups".
        verbose_name = "chat group"

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.key = group_key(self.name)
        self.skeleton = group_skeleton(self.name)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """The admin's check of the names `chat.groups.group_join` refuses."""
        super().clean()
        refused = new_group_name_refusal(self.name, exclude_pk=self.pk)
        same = ChatGroup.objects.filter(key=group_key(self.name)).exclude(pk=self.pk)
        if refused is None and same.exists():
            refused = f"a group named {self.name!r} exists already (names ignore case)"
        if refused:
            raise ValidationError({"name": refused})


class Membership(models.Model):
    class Role(models.TextChoices):
        """Protocol 1.2 (`chat.group_roles`): who may invite, remove and set roles."""

        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    group = models.ForeignKey(ChatGroup, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_memberships"
    )
    joined_at = models.DateTimeField(auto_now_add=True)
    # A group's creator is its owner. Groups made before roles: their earliest
    # member (migration 0016).
    role = models.CharField(
        max_length=6, choices=Role.choices, default=Role.MEMBER, db_default=Role.MEMBER
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "user"], name="unique_membership"),
        ]
        ordering = ["group__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.group}"


class MessageQuerySet(models.QuerySet["Message"]):
    def visible_to(self, user_id: int) -> MessageQuerySet:
        """Messages this user may read: broadcasts, own direct ones, own groups'."""
        return self.filter(
            Q(kind=Message.Kind.ALL)
            | Q(kind=Message.Kind.DIRECT, sender_id=user_id)
            | Q(kind=Message.Kind.DIRECT, recipient_id=user_id)
            | Q(
                kind=Message.Kind.GROUP,
                group_id__in=Membership.objects.filter(user_id=user_id).values("group_id"),
            )
        )

    def between(self, user_id: int, other_id: int) -> MessageQuerySet:
        """The direct conversation of two users (or of a user with themself)."""
        return self.filter(kind=Message.Kind.DIRECT).filter(
            Q(sender_id=user_id, recipient_id=other_id)
            | Q(sender_id=other_id, recipient_id=user_id)
        )

    def in_group(self, group_id: int) -> MessageQuerySet:
        return self.filter(kind=Message.Kind.GROUP, group_id=group_id)

    def broadcasts(self) -> MessageQuerySet:
        return self.filter(kind=Message.Kind.ALL)


class Message(models.Model):
    """One stored message. Ids only grow, and commit in id order (see messaging)."""

    class Kind(models.TextChoices):
        DIRECT = "direct"
        GROUP = "group"
        ALL = "all"

    kind = models.CharField(max_length=6, choices=Kind.choices)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sent_messages"
    )
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="received_messages",
    )
    group = models.ForeignKey(
        ChatGroup, on_delete=models.CASCADE, null=True, blank=True, related_name="messages"
    )
    body = models.TextField()
    created_at = models.DateTimeField(db_index=True)
    # Protocol 1.1: the sender's own id for this message, so that a send
    # repeated after a lost ack is recognised and stored only once. NULL, not
    # "", for "none": the unique constraint below then leaves those out.
    cid = models.CharField(max_length=64, null=True, blank=True, default=None)  # noqa: DJ001
    # Protocol 1.2. `rev` is NULL until the message first changes after it was
    # stored: its change number is then its id, which came from the same
    # counter (see chat.message_changes), so a store writes nothing extra.
    rev = models.BigIntegerField(null=True, blank=True, default=None, editable=False)
    edited_at = models.DateTimeField(null=True, blank=True, default=None, editable=False)
    deleted = models.BooleanField(default=False, db_default=False, editable=False)
    reply_to = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="replies",
        editable=False,
        # Indexed for replies only (message_reply_to): a store pays nothing.
        db_index=False,
    )
    # The usernames the body mentions, sorted, each between spaces (" ann bob "),
    # resolved when the message is stored or edited (chat.mentions); "" for none.
    mentions = models.TextField(default="", db_default="", blank=True, editable=False)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        # Direct messages are private: "view message" shows the others in the
        # admin, this one is needed to read (and search) direct messages too.
        permissions = [("view_direct_message", "Can read direct messages")]
        indexes = [
            models.Index(fields=["kind", "id"], name="message_kind_id"),
            models.Index(fields=["group", "id"], name="message_group_id"),
            models.Index(fields=["recipient", "id"], name="message_recipient_id"),
            models.Index(fields=["sender", "id"], name="message_sender_id"),
            models.Index(
                fields=["reply_to"], condition=Q(reply_to__isnull=False), name="message_reply_to"
            ),
            # Changed messages only: a store, which leaves `rev` NULL, pays nothing.
            models.Index(
                fields=["rev"], condition=Q(rev__isnull=False), name="message_changed_rev"
            ),
            models.Index(
                fields=["kind", "rev"], condition=Q(rev__isnull=False), name="message_kind_rev"
            ),
            models.Index(
                fields=["group", "rev"], condition=Q(rev__isnull=False), name="message_group_rev"
            ),
            models.Index(
                fields=["recipient", "rev"],
                condition=Q(rev__isnull=False),
                name="message_recipient_rev",
            ),
            models.Index(
                fields=["sender", "rev"], condition=Q(rev__isnull=False), name="message_sender_rev"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(kind="direct", recipient__isnull=False, group__isnull=True)
                    | Q(kind="group", recipient__isnull=True, group__isnull=False)
                    | Q(kind="all", recipient__isnull=True, group__isnull=True)
                ),
                name="message_has_one_audience",
            ),
            models.UniqueConstraint(
                fields=["sender", "cid"],
                condition=Q(cid__isnull=False),
                name="message_sender_cid",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.sender} → {self.audience_label}"

    @property
    def current_rev(self) -> int:
        """Its change number: its id until it first changed."""
        return self.rev if self.rev is not None else self.id

    def mentioned_names(self) -> list[str]:
        return self.mentions.split()

    @property
    def audience_label(self) -> str:
        if self.kind == self.Kind.DIRECT:
            return f"@{self.recipient}"
        if self.kind == self.Kind.GROUP:
            return f"#{self.group}"
        return "everyone"


class MessageEdit(models.Model):
    """A body a message had before an edit: who replaced it and when.

    Shown in the admin, never sent over the protocol; removed with the
    message's other content when it is deleted.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="edits")
    body = models.TextField()
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="message_edits"
    )
    edited_at = models.DateTimeField()

    class Meta:
        ordering = ["message_id", "id"]
        verbose_name = "earlier body"
        verbose_name_plural = "earlier bodies"

    def __str__(self) -> str:
        return f"#{self.message_id} before {self.edited_at:%Y-%m-%d %H:%M:%S}"


class Reaction(models.Model):
    """One user's reaction with one emoji to one message; ids give the order of use."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_reactions"
    )
    emoji = models.CharField(max_length=64)

    class Meta:
        ordering = ["message_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="unique_reaction"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.emoji} #{self.message_id}"


class Connection(models.Model):
    """An open socket, recorded for the admin's "who is online" page.

    The presence backend is the source of truth for transitions; this table is
    its mirror in the database, cleaned when a socket closes or its worker is
    found dead.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_connections"
    )
    worker = models.CharField(max_length=100, db_index=True)
    connection_id = models.CharField(max_length=150, unique=True)
    endpoint = models.CharField(max_length=20, default="json")
    opened_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user__username", "opened_at"]
        verbose_name = "online connection"
        # The admin's Workers page: every worker's name, sockets and version.
        permissions = [("view_workers", "Can view the Workers page")]

    def __str__(self) -> str:
        return f"{self.user} on {self.worker}"


class NameSkeleton(models.Model):
    """A registered user name's TR39 skeletons (chat.lookalikes), indexed.

    Sign-up finds a look-alike of a new name in one indexed query instead of
    comparing it with every user. Guests have none: their prefix is refused
    at sign-up by its own rule.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="name_skeletons"
    )
    skeleton = models.CharField(max_length=1000, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "skeleton"], name="name_skeleton_unique")
        ]

    def __str__(self) -> str:
        return self.skeleton


class ReadPosition(models.Model):
    """How far a user has read one conversation: the newest message id they have seen.

    `conversation` is `all`, `group:<id>` or `user:<id>` (the other party).
    Written coalesced by `chat.conversations`; it only moves forward.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_read_positions"
    )
    conversation = models.CharField(max_length=40)
    message_id = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "conversation"], name="unique_read_position"),
        ]
        verbose_name = "read position"

    def __str__(self) -> str:
        return f"{self.user} read {self.conversation} to #{self.message_id}"


class RelayedMessage(models.Model):
    """A layer message for a worker that the writing process's layer cannot reach.

    Without Redis each process has a channel layer of its own, so a change
    made by `manage.py` or a shell would reach no worker: it is written here,
    and the single worker polls this table (`chat.delivery.relay`).
    """

    origin = models.CharField(max_length=100)
    message = models.JSONField()
    created = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "relayed layer message"

    def __str__(self) -> str:
        return f"{self.message.get('type')} from {self.origin}"


def _upload_id() -> str:
    return secrets.token_urlsafe(18)


class Upload(models.Model):
    """A file uploaded over HTTP (issue 28); `message` is set when a send carries it.

    The id is random, not a counter, so that one upload's URL tells nothing of
    the others'. The stored file keeps nothing of the name the browser gave.
    """

    id = models.CharField(primary_key=True, max_length=32, default=_upload_id, editable=False)
    uploader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    storage_name = models.CharField(max_length=255)
    name = models.CharField(max_length=200)
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=100)
    width = models.IntegerField(null=True, blank=True)
    height = models.IntegerField(null=True, blank=True)
    thumb_name = models.CharField(max_length=255, blank=True, default="")
    created = models.DateTimeField(db_index=True)
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="files"
    )

    class Meta:
        ordering = ["created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"


class Profile(models.Model):
    """What a user chose to be called; a user without one is called by their username.

    Names are not unique and the look-alike rule does not apply: the username
    stays the identity, the name only what people read (`chat.profiles`).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="chat_profile",
    )
    name = models.CharField(max_length=64)

    def __str__(self) -> str:
        return self.name
