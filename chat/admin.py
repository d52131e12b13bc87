"""Admin: inspect groups, memberships, messages and who is online; log users out everywhere.

Messages and connections are read-only: an edit is its author's alone (over the
protocol; earlier bodies are shown here), and connections mirror live sockets.
Deleting a message goes the protocol's way: a tombstone, its audience told.
Removing a member or deleting a group goes as the protocol's `remove`, and a
role changed here is told as `role` (1.2).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from chat.delivery.publishing import to_group, to_message_audience
from chat.delivery.relay import publish_on_commit
from chat.group_roles import role_event
from chat.message_changes import change_event, message_tombstone
from chat.models import ChatGroup, Connection, Membership, Message, MessageEdit, Upload
from chat.revocation import log_out_everywhere, memberships_ended_by
from chat.workers import live_workers


def announce_role(membership: Membership, by: str) -> None:
    """A role changed here: the group's online members get `role`, as from the protocol."""
    event = role_event(
        group=membership.group.name,
        user=membership.user.get_username(),
        role=membership.role,
        by=by,
    )
    publish_on_commit(to_group(membership.group_id, event))


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 0
    fields = ("user", "role", "joined_at")
    readonly_fields = ("user", "joined_at")
    can_delete = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class EndsMembershipsAsRemove:
    """Memberships the admin deletes (a row, a group, a bulk action) end as the
    protocol's `remove` does: `left` with `"by"` the admin, sent on commit to
    every worker (`chat.revocation`), so open sockets stop hearing the group."""

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with memberships_ended_by(request.user.get_username()):
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with memberships_ended_by(request.user.get_username()):
            super().delete_queryset(request, queryset)  # type: ignore[misc]


@admin.register(ChatGroup)
class ChatGroupAdmin(EndsMembershipsAsRemove, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "private", "member_count", "online_count", "created_at")
    list_filter = ("private",)
    search_fields = ("name",)
    readonly_fields = ("created_at",)
    inlines = (MembershipInline,)
    # Explicit: Django ignores Meta.ordering once the counts below add a GROUP
    # BY, which left the membership form's group autocomplete unordered.
    ordering = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatGroup]:
        groups: QuerySet[ChatGroup] = (
            super()
            .get_queryset(request)
            .annotate(
                members_total=Count("memberships", distinct=True),
                members_online=Count(
                    "memberships__user",
                    filter=Q(memberships__user__chat_connections__isnull=False),
                    distinct=True,
                ),
            )
        )
        return groups

    @admin.display(description="members", ordering="members_total")
    def member_count(self, group: ChatGroup) -> int:
        return int(group.members_total)  # type: ignore[attr-defined]

    @admin.display(description="online", ordering="members_online")
    def online_count(self, group: ChatGroup) -> int:
        return int(group.members_online)  # type: ignore[attr-defined]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Members removed in the group's page go as `remove`; changed roles are told."""
        by = request.user.get_username()
        with memberships_ended_by(by):
            super().save_formset(request, form, formset, change)
        for member_form in formset.forms:
            membership = member_form.instance
            if (
                "role" in member_form.changed_data
                and membership.pk is not None
                and member_form not in formset.deleted_forms
            ):
                announce_role(membership, by)


@admin.register(Membership)
class MembershipAdmin(EndsMembershipsAsRemove, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("group", "user", "role", "joined_at")
    list_filter = ("role", "group")
    search_fields = ("group__name", "user__username")
    list_select_related = ("group", "user")
    readonly_fields = ("joined_at",)
    autocomplete_fields = ("group",)
    raw_id_fields = ("user",)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and "role" in form.changed_data:
            announce_role(obj, request.user.get_username())


class MessageEditInline(admin.TabularInline):  # type: ignore[type-arg]
    """A message's earlier bodies: kept for the admin, never sent over the protocol."""

    model = MessageEdit
    fields = ("edited_at", "edited_by", "body")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "id",
        "sender",
        "kind",
        "audience_label",
        "short_body",
        "created_at",
        "edited_at",
        "deleted",
    )
    list_filter = ("kind", "deleted", "created_at")
    inlines = [MessageEditInline]
    date_hierarchy = "created_at"
    search_fields = ("body", "sender__username", "recipient__username", "group__name")
    list_select_related = ("sender", "recipient", "group")

    class Media:
        # Keeps the short columns on one line so the body gets the row's width.
        css = {"all": ("chat/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        """Direct messages only for those allowed to read them (list, search, detail)."""
        messages = super().get_queryset(request)
        if not request.user.has_perm("chat.view_direct_message"):
            messages = messages.exclude(kind=Message.Kind.DIRECT)
        return messages

    @admin.display(description="body")
    def short_body(self, message: Message) -> str:
        return message.body if len(message.body) <= 80 else message.body[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        """The protocol's delete: a tombstone, its content removed, its audience told."""
        change = message_tombstone(obj.pk)
        if change is not None and change.changed:
            publish_on_commit(to_message_audience(change, change_event(change)))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        for message in queryset:
            self.delete_model(request, message)


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "worker", "endpoint", "opened_at")
    list_filter = ("worker", "endpoint")
    search_fields = ("user__username", "worker")
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        """A row mirrors a live socket: deleting it would not close the socket.

        "Log out everywhere" on a user closes their sockets for real.
        """
        return False


class ChatUserAdmin(UserAdmin):  # type: ignore[type-arg]
    """Django's user admin, plus who is online and ending a user's sessions and sockets."""

    actions = ("log_out_everywhere",)
    list_display = ("username", "email", "first_name", "last_name", "is_staff", "online")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        users: QuerySet[Any] = (
            super()
            .get_queryset(request)
            .annotate(
                has_connection=Exists(Connection.objects.filter(user_id=OuterRef("pk"))),
            )
        )
        return users

    @admin.display(description="online", boolean=True, ordering="has_connection")
    def online(self, user: Any) -> bool:
        return bool(user.has_connection)

    # "change": Django offers and runs the action only for holders of
    # auth.change_user; "Can view user" alone must not end a superuser's sessions.
    @admin.action(
        description="Log out everywhere (end every session, close every socket)",
        permissions=("change",),
    )
    def log_out_everywhere(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        users = list(queryset)
        sessions = sum(log_out_everywhere(user) for user in users)
        self.message_user(
            request,
            f"{sessions} session{'s' if sessions != 1 else ''} of {len(users)} "
            f"user{'s' if len(users) != 1 else ''} ended; their sockets are closing.",
        )


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), ChatUserAdmin)


# The index links to the Workers page, which is no model's changelist.
admin.site.index_template = "admin/chat_index.html"


def workers_view(request: HttpRequest) -> HttpResponse:
    """Read-only: every live worker with its heartbeat age, open sockets, uptime and version.

    Staff status alone is not enough, as for every other admin page: it takes
    chat.view_workers (superusers hold every permission).
    """
    if not request.user.has_perm("chat.view_workers"):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Workers",
        "workers": live_workers(),
        "timeout": settings.CHAT_PRESENCE_TIMEOUT,
    }
    return TemplateResponse(request, "admin/chat/workers.html", context)


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Uploaded files: who stored what, where it was sent, and each uploader's total."""

    list_display = (
        "name",
        "uploader",
        "size",
        "content_type",
        "message",
        "created",
        "uploader_total",
    )
    list_filter = ("content_type", "created")
    search_fields = ("name", "uploader__username")
    list_select_related = ("uploader", "message")
    date_hierarchy = "created"
    readonly_fields = [f.name for f in Upload._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upload]:
        totals = (
            Upload.objects.filter(uploader=OuterRef("uploader"))
            .order_by()
            .values("uploader")
            .annotate(total=Sum("size"))
            .values("total")
        )
        files: QuerySet[Upload] = super().get_queryset(request)
        return files.annotate(uploader_total=Subquery(totals))

    @admin.display(description="uploader's total (bytes)", ordering="uploader_total")
    def uploader_total(self, upload: Upload) -> int:
        return int(getattr(upload, "uploader_total", 0) or 0)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
