"""Live delivery: each worker's hub, its parts, and the messages workers exchange.

`hub` coordinates and its docstring lists the parts; `messages` types what
travels on the channel layer (and says how to add a message type).
"""

from chat.delivery.hub import Hub
from chat.delivery.messages import LAYER_ALL, group_layer_group, user_layer_group
from chat.delivery.sockets import LocalSocket, session_digest

__all__ = [
    "LAYER_ALL",
    "Hub",
    "LocalSocket",
    "group_layer_group",
    "session_digest",
    "user_layer_group",
]
