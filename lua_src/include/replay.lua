-- replay: the same answer for a call sent twice. A caller that may send a call
-- again (its connection dropped after Redis ran it but before the reply came)
-- passes a channel and a sequence number; the script keeps its last answer per
-- channel in "{Q}:rq:<channel>" for REPLAY_TTL_MS, and the same channel and number
-- again get that answer instead of a second run. A caller has at most one call
-- in flight per channel, so one key per channel is enough.
local REPLAY_TTL_MS = 600000

local function replay_key(chan) return base .. ":rq:" .. chan end

-- The saved answer when (chan, seq) was already run, else nil.
local function replay_get(chan, seq)
  if not chan or chan == "" then return nil end
  local saved = redis.call("GET", replay_key(chan))
  if not saved then return nil end
  local entry = cmsgpack.unpack(saved)
  if entry[1] ~= seq then return nil end
  return entry[2]
end

local function replay_put(chan, seq, answer)
  if chan and chan ~= "" then
    redis.call("SET", replay_key(chan), cmsgpack.pack({seq, answer}), "PX", REPLAY_TTL_MS)
  end
end
