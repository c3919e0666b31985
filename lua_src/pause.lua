-- pause: stop new reserves on a queue. Moves no job, touches no running job.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     none
-- Reply    "OK"
-- Errors   none
--@include base
redis.call("SET", base .. ":paused", "1")
return "OK"
