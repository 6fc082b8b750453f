"""Where the fleet placed each long shared prefix of a shared SGLang pool: ``replica_share: redis``.

Independent sidecars agree on a conversation's replica through the ring (``policy.ring``), but a system
prompt shared by many conversations is placed by what each sidecar alone knows: in a pool's first seconds,
or when many conversations start at once, every pod spreads its own new conversations, and the prompt ends up
cached on every replica. With a Redis, a new conversation's first turn asks one Lua script (``PLACE``) where
to go — the same question SGLang's cache-aware router answers from the tree of everything it routed:

- Redis keeps, per pool, each replica's count of conversations placed (decayed with a half-life of
  ``HALF_LIFE`` seconds: the fleet's recent placements, every pod's; one small hash per pool) and, per long
  prefix, the replicas it was placed on (its holders, kept ``TTL`` seconds after the last placement, only
  ``TTL_ONCE`` while one conversation has used it: apps that put a per-user detail in the system prompt make
  one key per conversation, about 100 bytes each, for a minute);
- the script sends the conversation to the least loaded holder still within the pool's load bound: ``factor``
  x the mean, this conversation counted, but at least the mean + ``SLACK`` conversations — a new (prefix,
  replica) pair costs a whole prefill of the prefix on that replica, while a few conversations over the mean
  cost little and even out as other prefixes are placed; the slack matters while counts are small (a pool's
  first seconds), the factor after. When no holder is within it, the least loaded eligible replica becomes one
  more holder (ties: the prefix's ring order, so prefixes do not all start on the same replica);
- the sidecar passes the replicas it may use now (healthy, not avoided, under the queue limit), so its own
  view of health and queues still decides; later turns stay where the first went (the pool's memory);
- the conversations a sidecar places without the script (no long shared prefix, or Redis was away: the ring)
  join the pool's counts too, in batches (``record``, ``RECORD``): placements balance against everything the
  pool carries.

One round trip per new conversation under a long shared prefix, never per turn; bounded by
``PLACE_TIMEOUT``; Redis slow, down or still being contacted → the sidecar places on its own (the ring), and
the ``RedisGate`` keeps requests from each paying the timeout while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
from hashlib import blake2b
from typing import Any

from sidecar.config.shared import RedisSettings
from sidecar.state.redis import RedisGate, client, warm_up

PLACE_TIMEOUT = 0.05  # seconds: slower, and the sidecar places on its own
RECORD_TIMEOUT = 0.5  # seconds a batch of conversations placed without the script may take (in the background)
FLUSH_SECONDS = 0.1  # those conversations reach Redis in batches, at most this late
HALF_LIFE = 60.0  # seconds: the half-life of a replica's count of conversations placed
SLACK = 4.0  # conversations a holder may carry over the mean before the prefix gets another holder (below)
TTL = 600  # seconds a prefix's holders (and a pool's counts) are kept after the last placement
TTL_ONCE = 60  # seconds for a prefix placed only once so far (a system prompt unique to one conversation)

# Both scripts: KEYS[1] is the pool's counts (replica name -> conversations placed, decayed; '@t': when last
# decayed); ARGV[1], ARGV[2]: the half-life and the TTL. DECAYED reads the counts as of now, SAVED writes them back.
DECAYED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local half, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local counts, at = {}, now
for i = 1, #all, 2 do
  if all[i] == '@t' then at = tonumber(all[i + 1]) else counts[all[i]] = tonumber(all[i + 1]) end
end
if now > at then
  local decay = math.pow(0.5, (now - at) / half)
  for name, count in pairs(counts) do counts[name] = count * decay end
end
"""
SAVED = """
local fields = {'@t', tostring(now)}
for name, count in pairs(counts) do
  if count >= 0.01 then
    fields[#fields + 1] = name
    fields[#fields + 1] = tostring(count)
  else
    redis.call('HDEL', KEYS[1], name)
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
"""
# KEYS[2]: the prefix's holders (replica name -> conversations placed). ARGV[3..5]: load factor, slack, the TTL of
# a prefix placed once; then the eligible replicas' names in the prefix's ring order. Returns the chosen name and
# "holder" or "new".
PLACE = DECAYED + """
local factor, slack, once = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local names, load, sum = {}, {}, 0
for i = 6, #ARGV do
  names[#names + 1] = ARGV[i]
  load[#names] = counts[ARGV[i]] or 0
  sum = sum + load[#names]
end
local n = #names
local mean = (sum + 1) / n
local cap = math.max(factor * mean, mean + slack)
local held = redis.call('HMGET', KEYS[2], unpack(names))
local best, how = nil, 'holder'
for i = 1, n do
  if held[i] and load[i] + 1 <= cap and (best == nil or load[i] < load[best]) then best = i end
end
if best == nil then
  how = 'new'
  for i = 1, n do
    if best == nil or load[i] < load[best] then best = i end
  end
end
counts[names[best]] = load[best] + 1
""" + SAVED + """
local placed = redis.call('HINCRBY', KEYS[2], names[best], 1)
if placed == 1 and redis.call('HLEN', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[2], math.min(ttl, once))  -- placed once: a prompt no other conversation shares, yet
else
  redis.call('EXPIRE', KEYS[2], ttl)
end
return {names[best], how}
"""
# ARGV[3..]: replica name, conversations placed there without the script (pairs). Returns nothing.
RECORD = DECAYED + """
for i = 3, #ARGV, 2 do counts[ARGV[i]] = (counts[ARGV[i]] or 0) + tonumber(ARGV[i + 1]) end
""" + SAVED


class ReplicaPlacement:
    """The Redis side of ``replica_share: redis`` for every pool of one config: client, gate, counters."""

    def __init__(self, settings: RedisSettings, namespace: str) -> None:
        self.settings = settings
        self.namespace = namespace
        self.redis = client(settings)
        self.gate = RedisGate("sglang replica placement", settings)
        self.prefix = f"{namespace}:sglang:"
        self.place_script: Any = self.redis.register_script(PLACE)
        self.record_script: Any = self.redis.register_script(RECORD)
        self.tags: dict[str, str] = {}  # pool -> its keys' hash tag
        self.pending: dict[str, dict[str, int]] = {}  # pool -> replica -> conversations to record (one batch)
        self.flushing: asyncio.Task[None] | None = None
        self.asked = 0  # placements asked of Redis
        self.unanswered = 0  # of them, failed or too slow (the sidecar placed on its own)
        self.flushes = 0  # batches of conversations placed without the script, recorded in Redis
        self.warming = asyncio.ensure_future(warm_up(self.redis, self.gate))

    def _key(self, pool: str, suffix: str) -> str:
        tag = self.tags.get(pool)
        if tag is None:  # a pool's keys share one hash tag: one Cluster slot, as a script's keys must
            tag = self.tags[pool] = blake2b(pool.encode(), digest_size=6).hexdigest()
        return f"{self.prefix}{{{tag}}}:{suffix}"

    async def place(self, pool: str, prefix: int, replicas: list[str], factor: float) -> tuple[str, str] | None:
        """(replica name, "holder" or "new") for a new conversation under ``prefix`` in ``pool`` (a deployment
        id), among ``replicas`` (eligible, in the prefix's ring order); None when Redis did not answer in time."""
        if not self.warming.done() or not self.gate.open:
            return None
        keys = [self._key(pool, "load"), self._key(pool, f"{prefix:016x}")]
        self.asked += 1
        try:
            args = [HALF_LIFE, TTL, factor, SLACK, TTL_ONCE, *replicas]
            name, how = await asyncio.wait_for(self.place_script(keys=keys, args=args), PLACE_TIMEOUT)
            answer = name.decode(), how.decode()  # anything else from Redis is a failure too
        except Exception as error:
            self.unanswered += 1
            self.gate.failed(error)
            return None
        self.gate.succeeded()
        return answer

    def record(self, pool: str, replica: str) -> None:
        """A new conversation the sidecar placed without the script (no long shared prefix; Redis away): it
        joins the pool's counts with the next batch, at most ``FLUSH_SECONDS`` later, so that placements balance
        against every conversation on the pool. Batches keep Redis traffic to one call per pool and interval; a
        batch Redis does not take is dropped (the counts are a balance hint, and decay)."""
        pending = self.pending.setdefault(pool, {})
        pending[replica] = pending.get(replica, 0) + 1
        if self.flushing is None:
            self.flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(FLUSH_SECONDS)
            batch, self.pending = self.pending, {}
            await self._send(batch)
        finally:
            self.flushing = None
        if self.pending:  # placed while this batch was on its way: the next batch, not whenever one more comes
            self.flushing = asyncio.ensure_future(self._flush())

    async def _send(self, batch: dict[str, dict[str, int]]) -> None:
        for pool, placed in batch.items():
            if not self.warming.done() or not self.gate.open:
                return
            args: list[object] = [HALF_LIFE, TTL]
            for replica, count in placed.items():
                args += (replica, count)
            try:
                await asyncio.wait_for(self.record_script(keys=[self._key(pool, "load")], args=args),
                                       RECORD_TIMEOUT)
            except Exception as error:
                self.gate.failed(error)
                return
            self.gate.succeeded()
            self.flushes += 1

    async def aclose(self) -> None:
        self.warming.cancel()
        if self.flushing is not None:
            self.flushing.cancel()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def render(self) -> str:
        return ("# HELP llm_sidecar_sglang_placements_total New conversations' replicas asked of Redis "
                "(replica_share: redis).\n# TYPE llm_sidecar_sglang_placements_total counter\n"
                f"llm_sidecar_sglang_placements_total {self.asked}\n"
                "# HELP llm_sidecar_sglang_placements_unanswered_total Of them, unanswered in time (placed by "
                "this sidecar alone).\n# TYPE llm_sidecar_sglang_placements_unanswered_total counter\n"
                f"llm_sidecar_sglang_placements_unanswered_total {self.unanswered}\n"
                "# HELP llm_sidecar_sglang_placement_flushes_total Batches of conversations placed without Redis "
                "(the ring) recorded in its counts.\n# TYPE llm_sidecar_sglang_placement_flushes_total counter\n"
                f"llm_sidecar_sglang_placement_flushes_total {self.flushes}\n")
