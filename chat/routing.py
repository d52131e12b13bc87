from django.urls import path

from chat.classic import ClassicConsumer
from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    # The plain-text protocol of old clients (docs/protocol.md).
    path("socket", ClassicConsumer.as_asgi()),
]
