"""Live delivery: each worker's hub, its parts, and the messages workers exchange.

`hub` coordinates; `messages` types what travels on the channel layer.
"""

from chat.delivery.hub import Connection, Hub, get_hub, session_digest
from chat.delivery.messages import LAYER_ALL, group_layer_group, user_layer_group

__all__ = [
    "LAYER_ALL",
    "Connection",
    "Hub",
    "get_hub",
    "group_layer_group",
    "session_digest",
    "user_layer_group",
]
