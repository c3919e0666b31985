-- take: pick the next runnable job id without leasing it yet.
local MAX_GROUP_POPS = 10
local K_LANE_RR = base .. ":lane:rr"
-- Read once per script: lane:rr, and whether the ready-groups set ran dry (a group
-- found full cannot get room back while this script runs, so no need to ask again).
local lane_rr = nil
local no_ready_groups = false

local function take_ungrouped()
  local job_id = redis.call("LPOP", K_WAIT)
  if not job_id then return nil end
  stat_add("waiting", -1)
  stat_add("waiting_total", -1)
  return job_id, ""
end

-- Pops the oldest ready group; a group found at its limit goes back with score
-- now + 1 so the next group gets its turn. At most MAX_GROUP_POPS pops per call, and
-- the full groups go back only after the loop, so one call never pops a group twice
-- (a ready score can be later than now + 1 when a publisher's clock runs ahead).
local function take_grouped(now)
  if no_ready_groups then return nil end
  local full = {}
  local job_id, gid
  for _ = 1, MAX_GROUP_POPS do
    local popped = redis.call("ZPOPMIN", K_GROUPS_READY)
    if #popped == 0 then
      no_ready_groups = true
      break
    end
    local g = popped[1]
    stat_add("groups_ready", -1)
    if group_inflight(g) >= group_limit(g) then
      full[#full + 1] = g
    else
      job_id = redis.call("LPOP", group_key(g, "wait"))
      if job_id then
        gid = g
        redis.call("INCR", group_key(g, "inflight"))
        stat_add("group_waiting", -1)
        stat_add("waiting_total", -1)
        group_ready_if_room(g, now)
        break
      end
    end
  end
  for _, g in ipairs(full) do
    if redis.call("ZADD", K_GROUPS_READY, "NX", now + 1, g) == 1 then
      stat_add("groups_ready", 1)
    end
  end
  if not job_id then return nil end
  return job_id, gid
end

-- lane:rr "0" tries the grouped lane first, "1" the ungrouped one.
local function take_next(now)
  if lane_rr == nil then lane_rr = to_int(redis.call("GET", K_LANE_RR)) end
  local grouped_first = lane_rr == 0
  local job_id, gid
  if grouped_first then
    job_id, gid = take_grouped(now)
    if not job_id then job_id, gid = take_ungrouped() end
  else
    job_id, gid = take_ungrouped()
    if not job_id then job_id, gid = take_grouped(now) end
  end
  return job_id, gid, grouped_first
end

-- Flips after each successful reserve, whichever lane served it; save_lanes
-- writes the result once.
local function flip_lanes(grouped_first)
  lane_rr = grouped_first and 1 or 0
end

local function save_lanes()
  if lane_rr ~= nil then redis.call("SET", K_LANE_RR, tostring(lane_rr)) end
end
