"""Every reach into another library's private parts, one module per library.

The server's speed comes partly from using what daphne, Twisted, autobahn,
channels_redis, Channels and Django do not promise to keep. Each such reach
lives in the module named after its library, and nowhere else, so that an
upgrade has one place to look; tests/test_upstream.py checks each against the
installed versions.
"""
