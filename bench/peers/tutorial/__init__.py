"""The Channels tutorial design, written for this benchmark.

Every socket has its own layer channel, `group_add`s it to the room on connect
and `group_send`s every message to the room; channels_redis's default
RedisChannelLayer delivers one copy per member channel, and every consumer
serialises its own copy. It speaks just enough of docs/protocol.md for the
load generator: `hello` on connect, `join` -> `joined`, `send` -> `ack` then
`message` to every member, `ping` -> `pong`. No accounts, no storage, no
rate limit: it does strictly less work per message than our server.
"""
