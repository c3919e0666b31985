-- pause: stop new reserves on a queue. Moves no job, touches no running job.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     none
-- Reply    "OK"
-- Errors   none
-- Generated from lua_src/pause.lua by tools/build_lua.py: edit the source, not this file.

-- Every script gets the anchor "<base>:meta" as KEYS[1] and derives the base.
local base = KEYS[1]
if string.sub(base, -5) == ":meta" then base = string.sub(base, 1, -6) end

redis.call("SET", base .. ":paused", "1")
return "OK"
