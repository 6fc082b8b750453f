-- wrk script: POST a small streaming chat completion request ("stream": true).
-- BENCH_MODEL picks the model group (the sidecar routes on it; nginx ignores the body).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local model = os.getenv("BENCH_MODEL") or "bench-stream"
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are terse."},'
  .. '{"role":"user","content":"Say hello in one word."}],"max_tokens":16,"temperature":0,"stream":true}'
