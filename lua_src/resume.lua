-- resume: allow reserves again.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     none
-- Reply    integer: 1 if the paused flag was removed, else 0
-- Errors   none
--@include base
return redis.call("DEL", base .. ":paused")
