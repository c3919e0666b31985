-- childs_init: start a fan-in counter expecting N children.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     expected (> 0)
-- Reply    {"OK"}
-- Errors   NO_EXPECTED, BAD_EXPECTED, ALREADY_INIT
--@include base
local expected = ARGV[1]

if not expected or expected == "" then return {"ERR", "NO_EXPECTED"} end
local n = to_int(expected)
if n <= 0 then return {"ERR", "BAD_EXPECTED"} end
local k_count = base .. ":count"
if redis.call("EXISTS", k_count) == 1 then return {"ERR", "ALREADY_INIT"} end
redis.call("SET", k_count, tostring(n))
redis.call("DEL", base .. ":done")
return {"OK"}
