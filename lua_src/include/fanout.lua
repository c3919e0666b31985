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
