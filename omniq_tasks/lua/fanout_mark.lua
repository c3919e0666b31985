-- fanout_mark (omniq-tasks extension): note a fan-out's progress: "published" = "1"
-- (every child published), "progress_ms" = epoch ms (its publisher is still at work:
-- the sweeper does not take the children it has not published yet for gone), or
-- "state" = "fired" (the callback is published, or there is none: later FIREs become
-- FIRED). A fan-out whose TTL passed is left alone.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     field ("published" | "progress_ms" | "state"), value
-- Reply    {"OK"} | {"GONE"}
-- Errors   {"ERR", "BAD_ARGS"}
-- Generated from lua_src/fanout_mark.lua by tools/build_lua.py: edit the source, not this file.

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

local field, value = ARGV[1], ARGV[2]

if not ((field == "published" and value == "1") or (field == "state" and value == "fired")
        or (field == "progress_ms" and string.match(value or "", "^[1-9]%d*$"))) then
  return {"ERR", "BAD_ARGS"}
end
if redis.call("EXISTS", k_fo) == 0 then return {"GONE"} end
redis.call("HSET", k_fo, field, value)
return {"OK"}
