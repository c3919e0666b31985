-- fanout_open (omniq-tasks extension): open a fan-out of n children, once per key.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     n (decimal digits, 0 <= n < 1e14), ttl_ms (> 0), then (callback JSON, "" =
--          none), on_error (JSON, "" = none), queues (JSON list of the children's
--          queues), now_ms ("0" = server)
-- Reply    {"OK"} opened (n = 0: closed at once, nothing to count);
--          {"EXISTS", published, n}: opened before (a retried parent): nothing changed
-- Errors   {"ERR", "BAD_ARGS"}, {"ERR", "ALREADY_INIT"} (a protocol counter of that
--          key is running, started by childs_init)
-- Generated from lua_src/fanout_open.lua by tools/build_lua.py: edit the source, not this file.

-- base: reading numbers, the clock and the queue base from the anchor.
local function to_int(v)
  if not v or v == "" then return 0 end
  local n = tonumber(v)
  if not n then return 0 end
  return math.floor(n)
end

-- The Redis server clock in ms. Used when a caller sends now_ms "0" or nothing,
-- so that workers on machines with skewed clocks agree on leases.
local function server_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_or_server(v)
  local n = to_int(v)
  if n > 0 then return n end
  return server_ms()
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

local n, ttl = tonumber(ARGV[1]), to_int(ARGV[2])

-- n: decimal digits only, below 1e14 ("1e300", "inf", "0x10" or 1e20 would be stored
-- in a form DECR refuses, or remaining counts printed as "1e+15": Lua's %.14g)
if not string.match(ARGV[1] or "", "^%d+$") or n >= 1e14 or ttl <= 0 then return {"ERR", "BAD_ARGS"} end
if redis.call("EXISTS", k_fo) == 1 then
  local seen = redis.call("HMGET", k_fo, "published", "n")
  return {"EXISTS", seen[1] or "0", seen[2] or "0"}
end
if redis.call("EXISTS", k_count) == 1 then return {"ERR", "ALREADY_INIT"} end
redis.call("DEL", k_done, k_res)
redis.call("HSET", k_fo, "n", n, "state", n > 0 and "open" or "closed", "then", ARGV[3] or "",
           "on_error", ARGV[4] or "", "queues", ARGV[5] or "[]", "created_ms", now_or_server(ARGV[6]),
           "published", "0", "failed", 0)
redis.call("PEXPIRE", k_fo, ttl)
if n > 0 then redis.call("SET", k_count, n, "PX", ttl) end
return {"OK"}
