"""Minimal settings for the tutorial peer: channels + channels_redis defaults."""

import os

SECRET_KEY = os.environ.get("SECRET_KEY", "bench-peer-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "bench.peers.tutorial.asgi.application"
USE_TZ = True
DATABASES: dict = {}

# channels_redis's RedisChannelLayer as the tutorial configures it: only the
# host given; the benchmark adds a key prefix (and uses its own db number) so
# that it can clean up after itself on a shared Redis.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/10")],
            "prefix": os.environ.get("PEER_REDIS_PREFIX", "benchpeer"),
        },
    }
}
