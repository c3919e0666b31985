-- child_ack: one child of a fan-in finished; answers how many remain. A repeated
-- child id does not count twice (it answers the current remaining). The ack that
-- reaches 0 answers "0" and deletes the counter keys, so every later ack finds no
-- counter (NO_COUNTER): "0" is answered once per counter.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     child_id
-- Reply    {"OK", remaining}
-- Errors   CHILD_REQUIRED, NO_COUNTER
-- Generated from lua_src/child_ack.lua by tools/build_lua.py: edit the source, not this file.

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

local child_id = ARGV[1] or ""

if child_id == "" then return {"ERR", "CHILD_REQUIRED"} end
local k_count = base .. ":count"
local k_done = base .. ":done"
if redis.call("EXISTS", k_count) == 0 then return {"ERR", "NO_COUNTER"} end
if redis.call("SADD", k_done, child_id) == 0 then
  return {"OK", tostring(math.max(to_int(redis.call("GET", k_count)), 0))}
end
local remaining = to_int(redis.call("DECR", k_count))
if remaining <= 0 then
  redis.call("DEL", k_count, k_done)
  return {"OK", "0"}
end
return {"OK", tostring(remaining)}
