-- childs_init: start a fan-in counter expecting N children.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     expected (> 0)
-- Reply    {"OK"}
-- Errors   NO_EXPECTED, BAD_EXPECTED, ALREADY_INIT
-- Generated from lua_src/childs_init.lua by tools/build_lua.py: edit the source, not this file.

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

local expected = ARGV[1]

if not expected or expected == "" then return {"ERR", "NO_EXPECTED"} end
local n = to_int(expected)
if n <= 0 then return {"ERR", "BAD_EXPECTED"} end
local k_count = base .. ":count"
if redis.call("EXISTS", k_count) == 1 then return {"ERR", "ALREADY_INIT"} end
redis.call("SET", k_count, tostring(n))
redis.call("DEL", base .. ":done")
return {"OK"}
