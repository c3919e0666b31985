-- batch: the shared frame of the *_batch scripts: count check, then one
-- "id, OK" or "id, ERR, reason" entry per id in a flat reply.
local MAX_BATCH = 100

-- ids start at ARGV[first]; returns the ids, or nil and the error reply.
local function batch_ids(count, first)
  if count > MAX_BATCH then return nil, {"ERR", "BATCH_TOO_LARGE", tostring(MAX_BATCH)} end
  if #ARGV < first - 1 + count then return nil, {"ERR", "BAD_ARGS"} end
  local ids = {}
  for i = 1, count do ids[i] = ARGV[first - 1 + i] end
  return ids
end

local function run_batch(ids, each)
  local out = {}
  local done = 0
  for _, job_id in ipairs(ids) do
    local reason
    if job_id == "" then reason = "BAD_JOB_ID" else reason = each(job_id) end
    out[#out + 1] = job_id
    if reason then
      out[#out + 1] = "ERR"
      out[#out + 1] = reason
    else
      out[#out + 1] = "OK"
      done = done + 1
    end
  end
  return out, done
end
