from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import checks  # noqa: F401  (registers the checks)
        from chat.lookalikes import connect_name_skeleton_signals
        from chat.revocation import connect_revocation_signals
        from chat.search import connect_search_signals
        from chat.uploads import connect_upload_signals

        connect_revocation_signals()
        connect_name_skeleton_signals()
        connect_upload_signals()
        connect_search_signals()
