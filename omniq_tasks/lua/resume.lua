-- resume: allow reserves again.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     none
-- Reply    integer: 1 if the paused flag was removed, else 0
-- Errors   none
-- Generated from lua_src/resume.lua by tools/build_lua.py: edit the source, not this file.

-- Every script gets the anchor "<base>:meta" as KEYS[1] and derives the base.
local base = KEYS[1]
if string.sub(base, -5) == ":meta" then base = string.sub(base, 1, -6) end

return redis.call("DEL", base .. ":paused")
