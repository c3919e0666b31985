-- fanout_child (omniq-tasks extension): one child of a fan-out ended for good (done,
-- or failed with no retry left). Counted once per child id, whatever the repeats.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     child_id (its job id), index (0-based, its place in the fan-out), entry
--          ("+<task>\n<result JSON>" or "-<task>\n<error text>"; the first one kept)
-- Reply    {"COUNTED", remaining} | {"DUP", remaining} (counted before) |
--          {"FIRE", then, on_error, failed}: every child is counted and the callback
--            is not yet marked published: publish it (once: see docs/workflows.md),
--            then call fanout_fired. A repeat gets FIRE again until then. |
--          {"FIRED"} (published already) | {"GONE"} (no such fan-out: its TTL passed)
-- Errors   {"ERR", "BAD_ARGS"}
-- Generated from lua_src/fanout_child.lua by tools/build_lua.py: edit the source, not this file.

-- base: reading numbers, the clock and the queue base from the anchor.
local function to_int(v)
  if not v or v == "" then return 0 end
  local n = tonumber(v)
  if not n then return 0 end
  return math.floor(n)
end

-- Every script gets the anchor "<base>:meta" as KEYS[1] and derives the base.
local base = KEYS[1]
if string.sub(base, -5) == ":meta" then base = string.sub(base, 1, -6) end
-- fanout (omniq-tasks extension): the keys of a fan-out, beside the protocol's
-- child counter in its slot "{cc:<key>}" (docs/workflows.md):
--   {cc:<key>}:count  STRING children not yet counted (the protocol's counter)
--   {cc:<key>}:done   SET    ids of the children counted (the protocol's)
--   {cc:<key>}:fo     HASH   n, state (open | closed | fired), then, on_error (the
--                            callbacks as JSON, "" = none), queues (JSON), created_ms,
--                            published ("1" once every child was published), failed
--   {cc:<key>}:res    HASH   child index -> "+<task>\n<result JSON>" or "-<task>\n<error>"
-- Every key dies with the fan-out's TTL (set on :fo when it is opened).
local k_fo = base .. ":fo"
local k_count = base .. ":count"
local k_done = base .. ":done"
local k_res = base .. ":res"

-- Give ``key`` the fan-out's remaining TTL (ms) when it has none yet.
local function keep_ttl(key, ttl)
  if ttl > 0 and redis.call("PTTL", key) == -1 then redis.call("PEXPIRE", key, ttl) end
end

local child_id, index, entry = ARGV[1] or "", ARGV[2] or "", ARGV[3] or ""

if child_id == "" or not string.match(index, "^%d+$") or entry == "" then return {"ERR", "BAD_ARGS"} end
local state = redis.call("HGET", k_fo, "state")
if not state then return {"GONE"} end
if state == "open" then
  if redis.call("SADD", k_done, child_id) == 0 then
    return {"DUP", tostring(math.max(to_int(redis.call("GET", k_count)), 0))}
  end
  local ttl = redis.call("PTTL", k_fo)
  keep_ttl(k_done, ttl)
  redis.call("HSETNX", k_res, index, entry)
  keep_ttl(k_res, ttl)
  if string.sub(entry, 1, 1) == "-" then redis.call("HINCRBY", k_fo, "failed", 1) end
  local remaining = redis.call("DECR", k_count)
  if remaining > 0 then return {"COUNTED", tostring(remaining)} end
  redis.call("DEL", k_count, k_done)
  redis.call("HSET", k_fo, "state", "closed")
  state = "closed"
end
if state == "closed" then
  local fo = redis.call("HMGET", k_fo, "then", "on_error", "failed")
  return {"FIRE", fo[1] or "", fo[2] or "", fo[3] or "0"}
end
return {"FIRED"}
