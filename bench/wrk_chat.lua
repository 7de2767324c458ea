-- wrk script for bench/gateway_bench.py: POSTs one chat completion per request.
-- Arguments after "--": <model> <mode> <bearer key> <run nonce> [<portkey upstream>], mode one of
--   unique      every prompt differs, sent with "x-llmops-cache: bypass, no-store" (no cache work at all)
--   unique-cached  every prompt differs, cache on: each miss pays the exact and semantic lookups and the store
--   same        one prompt (an exact cache hit after the first)
--   paraphrase  rewordings of one question (semantic cache hits), sent with "x-llmops-cache: no-store"
--   stream      unique prompts with "stream": true, cache bypassed like unique
-- With a Portkey upstream (an OpenAI base URL), the request names it in Portkey's provider headers.
local threads = {}
local counter = 0
-- Rewordings of the stored "What is the refund policy for late orders?" that the shipped decision (similarity,
-- near-miss guard, cross-encoder) serves, so every request of the scenario is a semantic hit.
local paraphrases = {
  "Explain the refund policy for late orders",
  "Could you explain the refund policy for late orders?",
  "Tell me the refund policy for late orders",
  "Describe the refund policy for late orders",
}

-- What each cache scenario's answers should say in x-llmops-cache. Its responses are counted by whether they do, so a
-- figure that is partly something else says so; the other scenarios leave wrk's header parsing off.
local expected_answers = { ["unique-cached"] = "miss", same = "hit-exact", paraphrase = "hit-semantic" }
as_expected, otherwise = 0, 0

local function counted(status, headers, body)
  if headers["x-llmops-cache"] == expected_answer then
    as_expected = as_expected + 1
  else
    otherwise = otherwise + 1
  end
end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  model, mode, nonce = args[1], args[2], args[4]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[3]
  if mode == "unique" or mode == "stream" then wrk.headers["x-llmops-cache"] = "bypass, no-store" end
  -- A rewording the cache misses is not stored: stored, it would be an exact hit for the rest of the run.
  if mode == "paraphrase" then wrk.headers["x-llmops-cache"] = "no-store" end
  expected_answer = expected_answers[mode]
  if expected_answer then response = counted end
  if args[5] then
    wrk.headers["x-portkey-provider"] = "openai"
    wrk.headers["x-portkey-custom-host"] = args[5]
  end
end

function request()
  counter = counter + 1
  local content
  if mode == "same" then
    content = "Summarise the refund policy for late orders"
  elseif mode == "paraphrase" then
    content = paraphrases[(counter % #paraphrases) + 1]
  else
    content = "Summarise support ticket " .. nonce .. "-" .. tid .. "-" .. counter .. " about a late refund"
  end
  local stream = ""
  if mode == "stream" then stream = ',"stream":true' end
  local body = '{"model":"' .. model .. '","max_tokens":64,"temperature":0,"messages":[{"role":"user","content":"'
    .. content .. '"}]' .. stream .. '}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local expected, other = 0, 0
  for _, thread in ipairs(threads) do
    expected = expected + thread:get("as_expected")
    other = other + thread:get("otherwise")
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50":%d,"p95":%d,"p99":%d,'
    .. '"as_expected":%d,"otherwise":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), expected, other))
end
