"""Who is online: one small interface, stored in memory or in Redis.

A user is online while at least one of their sockets is open on a live
worker. The store answers each change with whether it was a *transition*
(first socket opened, last socket closed), atomically, so that exactly one
worker announces it even when tabs on different workers open or close at the
same moment. Socket-cap claims live here too: a claim counts with the user's
recorded sockets in the same atomic step.

Which workers are alive is the worker registry's (`chat.registry`); when it
finds one dead, `drop_worker` takes that worker's sockets out of presence.
The in-memory store serves a single process (development, tests);
`RedisPresenceStore` is picked when `REDIS_URL` is set (`chat.worker`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

# Seconds a granted socket claim counts while its socket is not yet recorded.
CLAIM_SECONDS = 30


@dataclass(frozen=True, slots=True)
class SocketClaim:
    """A socket of `username` asking for a place under a cap of `cap` sockets."""

    username: str
    connection_id: str
    cap: int


class PresenceStore(ABC):
    @abstractmethod
    async def connect(self, *, worker: str, connection_id: str, username: str) -> bool:
        """Record an open socket; True when it is the user's first one."""

    @abstractmethod
    async def disconnect(self, *, worker: str, connection_id: str, username: str) -> bool:
        """Forget a socket; True when it was the user's last one."""

    @abstractmethod
    async def note_seen(self, username: str, moment: str) -> None:
        """Record when a user went offline (ISO 8601), for `last_seen`."""

    @abstractmethod
    async def last_seen(self, usernames: Sequence[str]) -> dict[str, str]:
        """When each of these users went offline last, for those recorded."""

    async def connect_many(self, *, worker: str, sockets: Sequence[tuple[str, str]]) -> list[bool]:
        """`connect` of each (connection id, username), in order: the Redis store makes one trip."""
        return [
            await self.connect(worker=worker, connection_id=connection_id, username=username)
            for connection_id, username in sockets
        ]

    async def disconnect_many(
        self, *, worker: str, sockets: Sequence[tuple[str, str]]
    ) -> list[bool]:
        """`disconnect` of each (connection id, username), in order (one trip on Redis)."""
        return [
            await self.disconnect(worker=worker, connection_id=connection_id, username=username)
            for connection_id, username in sockets
        ]

    @abstractmethod
    async def online(self) -> set[str]:
        """Usernames with at least one open socket."""

    @abstractmethod
    async def claim_sockets(self, claims: Sequence[SocketClaim]) -> list[bool]:
        """Claim a place for each opening socket under its user's cap, atomically, in order.

        A claim counts with the user's recorded sockets until `connect` records
        that socket (or it disconnects), or for `CLAIM_SECONDS` if it never
        is (a handshake that failed). True for each claim granted.
        """

    @abstractmethod
    async def drop_worker(self, *, worker: str) -> list[str]:
        """Forget every socket of a worker (stopping, or found dead); the users now offline."""


class MemoryPresenceStore(PresenceStore):
    """Presence for one process. Not shared: use Redis for several workers."""

    def __init__(self) -> None:
        self._sockets: dict[str, set[tuple[str, str]]] = {}
        self._seen: dict[str, str] = {}
        self._claims: dict[str, dict[str, float]] = {}

    async def note_seen(self, username: str, moment: str) -> None:
        self._seen[username] = moment

    async def last_seen(self, usernames: Sequence[str]) -> dict[str, str]:
        return {name: self._seen[name] for name in usernames if name in self._seen}

    async def connect(self, *, worker: str, connection_id: str, username: str) -> bool:
        self._unclaim(username, connection_id)
        sockets = self._sockets.setdefault(username, set())
        first = not sockets
        sockets.add((worker, connection_id))
        return first

    async def disconnect(self, *, worker: str, connection_id: str, username: str) -> bool:
        self._unclaim(username, connection_id)
        sockets = self._sockets.get(username)
        if not sockets or (worker, connection_id) not in sockets:
            return False
        sockets.discard((worker, connection_id))
        if sockets:
            return False
        del self._sockets[username]
        return True

    async def online(self) -> set[str]:
        return set(self._sockets)

    async def claim_sockets(self, claims: Sequence[SocketClaim]) -> list[bool]:
        now = time.time()
        granted = []
        for claim in claims:
            pending = self._claims.setdefault(claim.username, {})
            for connection_id, expiry in list(pending.items()):
                if expiry <= now:
                    del pending[connection_id]
            held = len(self._sockets.get(claim.username, ())) + len(pending)
            if held >= claim.cap:
                granted.append(False)
            else:
                pending[claim.connection_id] = now + CLAIM_SECONDS
                granted.append(True)
            if not pending:
                del self._claims[claim.username]
        return granted

    def _unclaim(self, username: str, connection_id: str) -> None:
        pending = self._claims.get(username)
        if pending is not None:
            pending.pop(connection_id, None)
            if not pending:
                del self._claims[username]

    async def drop_worker(self, *, worker: str) -> list[str]:
        offline = []
        for username, sockets in list(self._sockets.items()):
            remaining = {s for s in sockets if s[0] != worker}
            if remaining == sockets:
                continue
            if remaining:
                self._sockets[username] = remaining
            else:
                del self._sockets[username]
                offline.append(username)
        return offline


# Keys (below the deployment prefix; the worker registry's are in chat.registry):
#   presence:worker:<w>         SET of "<username>\n<connection id>" on that worker
#   presence:user:<username>    SET of connection ids
#   presence:online             SET of usernames with at least one socket
#   presence:claims:<username>  ZSET connection id -> expiry: sockets admitted
#                               under the user's cap and not recorded yet
# Each change is one Lua script, so transitions are decided atomically.
_CONNECT = """
redis.call('ZREM', KEYS[4], ARGV[2])
local added = redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2])
if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

_DISCONNECT = """
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2])
local removed = redis.call('SREM', KEYS[1], ARGV[2])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: the user's sockets, the user's claims. ARGV: connection id, cap, now,
# the claim's expiry, its key's time to live. 1 if granted.
_CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('SCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

# KEYS: online set. ARGV: key prefix, worker.
_DROP_WORKER = """
local prefix = ARGV[1]
local worker_key = prefix .. 'presence:worker:' .. ARGV[2]
local offline = {}
for _, entry in ipairs(redis.call('SMEMBERS', worker_key)) do
  local sep = string.find(entry, '\\n', 1, true)
  local username = string.sub(entry, 1, sep - 1)
  local conn = string.sub(entry, sep + 1)
  local user_key = prefix .. 'presence:user:' .. username
  if redis.call('SREM', user_key, conn) == 1 and redis.call('SCARD', user_key) == 0 then
    if redis.call('SREM', KEYS[1], username) == 1 then
      table.insert(offline, username)
    end
  end
end
redis.call('DEL', worker_key)
return offline
"""


class RedisPresenceStore(PresenceStore):
    """Presence shared by every worker through Redis."""

    def __init__(self, prefix: str, *, redis: aioredis.Redis) -> None:
        self.prefix = prefix
        self.redis = redis
        self._online_key = f"{prefix}presence:online"

    async def note_seen(self, username: str, moment: str) -> None:
        await self.redis.hset(f"{self.prefix}presence:last_seen", username, moment)

    async def last_seen(self, usernames: Sequence[str]) -> dict[str, str]:
        if not usernames:
            return {}
        names = list(usernames)
        found = await self.redis.hmget(f"{self.prefix}presence:last_seen", names)
        return {name: str(at) for name, at in zip(names, found, strict=True) if at is not None}

    def _user_key(self, username: str) -> str:
        return f"{self.prefix}presence:user:{username}"

    def _claims_key(self, username: str) -> str:
        return f"{self.prefix}presence:claims:{username}"

    def _worker_key(self, worker: str) -> str:
        return f"{self.prefix}presence:worker:{worker}"

    async def connect(self, *, worker: str, connection_id: str, username: str) -> bool:
        (first,) = await self.connect_many(worker=worker, sockets=[(connection_id, username)])
        return first

    async def disconnect(self, *, worker: str, connection_id: str, username: str) -> bool:
        (last,) = await self.disconnect_many(worker=worker, sockets=[(connection_id, username)])
        return last

    async def connect_many(self, *, worker: str, sockets: Sequence[tuple[str, str]]) -> list[bool]:
        return await self._each_in_one_trip(_CONNECT, worker, sockets)

    async def disconnect_many(
        self, *, worker: str, sockets: Sequence[tuple[str, str]]
    ) -> list[bool]:
        return await self._each_in_one_trip(_DISCONNECT, worker, sockets)

    async def _each_in_one_trip(
        self, script: str, worker: str, sockets: Sequence[tuple[str, str]]
    ) -> list[bool]:
        """The script once per socket, in order, in one pipeline (each run is atomic)."""
        redis = self.redis
        async with redis.pipeline(transaction=False) as pipe:
            for connection_id, username in sockets:
                keys = [
                    self._user_key(username),
                    self._worker_key(worker),
                    self._online_key,
                    self._claims_key(username),
                ]
                pipe.eval(script, 4, *keys, username, connection_id)
            return [bool(changed) for changed in await pipe.execute()]

    async def claim_sockets(self, claims: Sequence[SocketClaim]) -> list[bool]:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for claim in claims:
                keys = [self._user_key(claim.username), self._claims_key(claim.username)]
                expiry = now + CLAIM_SECONDS
                pipe.eval(_CLAIM, 2, *keys, claim.connection_id, claim.cap, now, expiry, 60)
            return [bool(granted) for granted in await pipe.execute()]

    async def online(self) -> set[str]:
        redis = self.redis
        return {str(m) for m in await redis.smembers(self._online_key)}

    async def drop_worker(self, *, worker: str) -> list[str]:
        redis = self.redis
        result = await redis.eval(_DROP_WORKER, 1, self._online_key, self.prefix, worker)
        return [str(u) for u in result]
