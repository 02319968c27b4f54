package valkeyindex

import "github.com/valkey-io/valkey-go"

// matchScript walks a request's block keys and returns, per worker holding the first
// block, its leading overlap: {worker, blocks, confirmed, flags1, count1, flags2, count2,
// ...}, the counts being how many of the leading blocks the worker held with each
// (masked) flags value, from which the client computes the score with its tier weights.
//
// KEYS: the events-epoch hash, the prediction-epoch hash, then the request's block keys.
// ARGV: now (unix ms), count mask, confirmed mask, max workers.
//
// Fields of a block key: "<ev epoch>t<worker>" = tier flags, "<pred epoch>p<worker>" =
// prediction expiry (unix ms), "#" = number of tier fields. A field whose epoch is not
// the worker's current one is ignored.
var matchScript = valkey.NewLuaScriptReadOnly(`
local now = tonumber(ARGV[1])
local cmask = tonumber(ARGV[2])
local fmask = tonumber(ARGV[3])
local maxw = tonumber(ARGV[4])
local n = #KEYS - 2
if n < 1 then return {} end
local first = redis.call('HGETALL', KEYS[3])
local cand, order = {}, {}
for i = 1, #first, 2 do
  local f = first[i]
  local _, e = string.find(f, '^%d+')
  if e then
    local wk = string.sub(f, e + 2)
    local c = cand[wk]
    if not c then
      if #order < maxw then
        c = {}
        cand[wk] = c
        order[#order + 1] = wk
      end
    end
    if c then
      local kind = string.sub(f, e + 1, e + 1)
      if kind == 't' then
        c.te, c.t = string.sub(f, 1, e), tonumber(first[i + 1])
      elseif kind == 'p' then
        c.pe, c.p = string.sub(f, 1, e), tonumber(first[i + 1])
      end
    end
  end
end
if #order == 0 then return {} end
local evs = redis.call('HMGET', KEYS[1], unpack(order))
local eps = redis.call('HMGET', KEYS[2], unpack(order))
local open = {}
for j, wk in ipairs(order) do
  local c = cand[wk]
  local ev, ep = evs[j] or '0', eps[j] or '0'
  local f = 0
  if c.te == ev and c.t then f = c.t end
  if c.pe == ep and c.p and c.p > now then f = bit.bor(f, 128) end
  f = bit.band(f, cmask)
  if f ~= 0 then
    open[#open + 1] = {wk = wk, ft = ev .. 't' .. wk, fp = ep .. 'p' .. wk, f = f, start = 0,
      conf = bit.band(f, fmask) ~= 0, confirmed = 0, blocks = 0, counts = {}, live = true}
  end
end
local function close(w, i)
  w.counts[w.f] = (w.counts[w.f] or 0) + (i - w.start)
  w.blocks, w.live = i, false
  if w.conf then w.conf, w.confirmed = false, i end
end
local live = open
local i = 1
while i < n and #live > 0 do
  local fields = {}
  for _, w in ipairs(live) do
    fields[#fields + 1] = w.ft
    fields[#fields + 1] = w.fp
  end
  local vals = redis.call('HMGET', KEYS[i + 3], unpack(fields))
  local still = {}
  for k, w in ipairs(live) do
    local t, p = vals[2 * k - 1], vals[2 * k]
    local f = 0
    if t then f = tonumber(t) end
    if p and tonumber(p) > now then f = bit.bor(f, 128) end
    f = bit.band(f, cmask)
    if f == 0 then
      close(w, i)
    else
      if f ~= w.f then
        w.counts[w.f] = (w.counts[w.f] or 0) + (i - w.start)
        w.f, w.start = f, i
      end
      if w.conf and bit.band(f, fmask) == 0 then w.conf, w.confirmed = false, i end
      still[#still + 1] = w
    end
  end
  live = still
  i = i + 1
end
for _, w in ipairs(live) do close(w, n) end
local out = {}
for _, w in ipairs(open) do
  local r = {w.wk, w.blocks, w.confirmed}
  for f, c in pairs(w.counts) do
    if c > 0 then
      r[#r + 1] = f
      r[#r + 1] = c
    end
  end
  out[#out + 1] = r
end
return out
`)

// writeScript applies a sequence of entry changes and epoch bumps in order.
//
// KEYS: the events-epoch hash, the prediction-epoch hash, then one key per operation (a
// block key; any key for a bump). ARGV: now (unix ms), the TTL (ms) of a key left with
// predictions only, then three values per operation: worker, tier, pred. tier: -1 leave
// the tier field, 0 delete it, > 0 set it to these flags; -2 bump the worker's events
// epoch, -3 bump both epochs (pred ignored). pred: -1 leave, 0 delete, > 0 set the
// prediction's expiry (unix ms). A key with tier fields has no TTL; a key with only
// predictions expires with its last prediction (at most the TTL after its last tier
// field went), so predictions of a process that died do not stay.
var writeScript = valkey.NewLuaScript(`
local now = tonumber(ARGV[1])
local pttl = tonumber(ARGV[2])
local evc, epc = {}, {}
local function epoch(h, cache, wk)
  local e = cache[wk]
  if not e then
    e = redis.call('HGET', h, wk) or '0'
    cache[wk] = e
  end
  return e
end
for i = 3, #KEYS do
  local a = (i - 3) * 3 + 3
  local k, wk, tf, pe = KEYS[i], ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if tf <= -2 then
    evc[wk] = tostring(redis.call('HINCRBY', KEYS[1], wk, 1))
    if tf == -3 then epc[wk] = tostring(redis.call('HINCRBY', KEYS[2], wk, 1)) end
  else
    if tf > 0 then
      if redis.call('HSET', k, epoch(KEYS[1], evc, wk) .. 't' .. wk, tf) == 1 then
        redis.call('HINCRBY', k, '#', 1)
      end
      redis.call('PERSIST', k)
    elseif tf == 0 then
      if redis.call('HDEL', k, epoch(KEYS[1], evc, wk) .. 't' .. wk) == 1 then
        if redis.call('HINCRBY', k, '#', -1) <= 0 then
          redis.call('HDEL', k, '#')
          redis.call('PEXPIRE', k, pttl)
        end
      end
    end
    if pe > 0 then
      redis.call('HSET', k, epoch(KEYS[2], epc, wk) .. 'p' .. wk, pe)
      if redis.call('HEXISTS', k, '#') == 0 then
        local left = math.max(pe - now, 1)
        if redis.call('PTTL', k) < left then redis.call('PEXPIRE', k, left) end
      end
    elseif pe == 0 then
      redis.call('HDEL', k, epoch(KEYS[2], epc, wk) .. 'p' .. wk)
    end
  end
end
return #KEYS - 2
`)
