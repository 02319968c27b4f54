// kvroute admin dashboard: polls api/overview every second and redraws. Plain DOM and
// canvas, no dependencies, so it works offline from the router binary's embedded files.
'use strict';

const POLL_MS = 1000;
const state = { overview: null, selected: null, drill: null, polls: 0, failures: 0 };

// el builds an element; text children become text nodes (never parsed as HTML).
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'style') e.setAttribute('style', v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) {
    if (k === undefined || k === null) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

const fmtInt = (n) => (n === null || n === undefined) ? '–' : Math.round(n).toLocaleString('en-US');
const fmtPct = (r) => (r === null || r === undefined) ? '–' : (100 * r).toFixed(1) + '%';
const fmtMs = (v) => (v === null || v === undefined) ? '–' : (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ms';
const fmtSec = (v) => (v === null || v === undefined) ? '–' : (v < 1 ? (1000 * v).toFixed(0) + ' ms' : v.toFixed(1) + ' s');
const fmtAge = (t) => { const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000); return s < 90 ? s.toFixed(0) + ' s' : (s / 60).toFixed(0) + ' min'; };

function token() { return document.getElementById('token').value.trim(); }

async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  const body = await r.json().catch(() => ({ error: 'unreadable answer' }));
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  return body;
}

async function post(path) {
  const headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();
  const r = await fetch(path, { method: 'POST', headers, credentials: 'same-origin' });
  const body = await r.json().catch(() => ({ error: 'unreadable answer' }));
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  return body;
}

function setMsg(text, bad) {
  const m = document.getElementById('action-msg');
  m.textContent = text;
  m.style.color = bad ? 'var(--bad)' : '';
}

async function poll() {
  try {
    const o = await getJSON('api/overview');
    state.overview = o;
    state.polls++;
    render(o);
    if (state.selected) {
      state.drill = await getJSON('api/workers/' + encodeURIComponent(state.selected));
      renderDrill(state.drill);
    }
    const p = document.getElementById('poll');
    p.textContent = 'live · ' + new Date(o.time).toLocaleTimeString();
    p.className = 'badge ok';
  } catch (err) {
    state.failures++;
    const p = document.getElementById('poll');
    p.textContent = 'error: ' + err.message;
    p.className = 'badge bad';
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function render(o) {
  const i = o.info;
  document.getElementById('info').textContent =
    `policy ${i.policy} · tokenize ${i.tokenize_mode} · events ${i.event_source} · up ${fmtAge(i.started)}` +
    (i.config_file ? ` · ${i.config_file}` : '');
  renderKPIs(o);
  const series = (o.stats.traffic && o.stats.traffic.series) || [];
  drawHitChart(document.getElementById('hit-chart'), series);
  drawTTFTChart(document.getElementById('ttft-chart'), series);
  renderWorkers(o);
  renderHeatmap(o);
  renderDecisions(o.decisions || []);
}

function renderKPIs(o) {
  const t = o.stats.traffic;
  const w = (name) => t.windows.find((x) => x.name === name).global;
  const kpi = (label, value, title) => el('div', { class: 'kpi', title }, el('div', { class: 'v' }, value), el('div', { class: 'l' }, label));
  const tok = o.stats.tokenize;
  const tokErr = Object.values(tok.errors || {}).reduce((a, b) => a + b, 0);
  const sum = (m) => Object.values(m || {}).reduce((a, b) => a + b, 0);
  const q = o.stats.queue;
  const models = Object.keys(t.windows[1].models).sort();
  const box = document.getElementById('kpis');
  box.replaceChildren(
    kpi('hit rate 1m', fmtPct(w('1m').hit_rate), 'predicted hit tokens / prompt tokens of requests routed in the last minute'),
    kpi('hit rate 5m', fmtPct(w('5m').hit_rate)),
    kpi('hit rate 15m', fmtPct(w('15m').hit_rate)),
    kpi('reported hit 5m', fmtPct(w('5m').reported.reported_hit_rate),
      `cached tokens the engines reported / their prompt tokens, over ${fmtInt(w('5m').reported.answers)} answers that said; the router predicted ${fmtPct(w('5m').reported.predicted_hit_rate)} for them`),
    kpi('requests/s (1m)', w('1m').requests_per_second.toFixed(1)),
    kpi('decisions/s (1m)', w('1m').decisions_per_second.toFixed(1), 'routing decisions per second, retries included'),
    kpi('TTFT p50 (1m)', fmtMs(w('1m').ttft.p50_ms)),
    kpi('TTFT p90 (1m)', fmtMs(w('1m').ttft.p90_ms)),
    kpi('TTFT p99 (1m)', fmtMs(w('1m').ttft.p99_ms)),
    kpi('errors (5m)', fmtInt(w('5m').errors), 'requests ending with status >= 500 or the client gone mid-response'),
    kpi('queued', fmtInt(sum(q.depth)), 'requests waiting for a worker with a free slot (queue section), by class: ' +
      Object.entries(q.depth || {}).map(([c, n]) => `${c} ${fmtInt(n)}`).join(', ') +
      `; mean wait ${fmtMs(q.left ? 1000 * q.wait_seconds / q.left : 0)}`),
    kpi('queue rejected', fmtInt(sum(q.rejected)), 'requests that found every worker full and got no worker (429, or the client left), since start: ' +
      Object.entries(q.rejected || {}).map(([r, n]) => `${r} ${fmtInt(n)}`).join(', ')),
    kpi('tokenizer errors', fmtInt(tokErr), `mode ${tok.mode}; fallbacks to approx: ${fmtInt(Object.values(tok.fallbacks || {}).reduce((a, b) => a + b, 0))}`),
    ...models.map((m) => kpi('hit rate 5m · ' + m, fmtPct(t.windows[1].models[m].hit_rate), 'per model')),
  );
}

// chart draws lines (and optional bars) on a canvas; xs are Unix seconds. It records the
// number of points drawn in data-drawn, which the browser test reads.
function chart(canvas, { lines, bars, yMax, yFmt }) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, L = 46, R = 8, T = 8, B = 18;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  const all = lines.flatMap((l) => l.points).concat(bars ? bars.points : []);
  if (all.length === 0) {
    canvas.dataset.drawn = '0';
    return;
  }
  const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]), x0 + 1);
  const top = yMax || Math.max(1e-9, ...all.map((p) => p[1])) * 1.1;
  const X = (x) => L + (W - L - R) * (x - x0) / (x1 - x0);
  const Y = (y) => H - B - (H - B - T) * Math.min(y, top) / top;
  ctx.strokeStyle = '#e2e8f0';
  ctx.fillStyle = '#6b7385';
  ctx.font = '10px sans-serif';
  ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = top * k / 4;
    ctx.beginPath(); ctx.moveTo(L, Y(y)); ctx.lineTo(W - R, Y(y)); ctx.stroke();
    ctx.fillText(yFmt(y), 2, Y(y) + 3);
  }
  ctx.fillText(`-${Math.round(x1 - x0)} s`, L, H - 4);
  ctx.fillText('now', W - R - 20, H - 4);
  let drawn = 0;
  if (bars) {
    ctx.fillStyle = bars.color;
    const bw = Math.max(1, (W - L - R) / Math.max(1, x1 - x0) - 1);
    for (const [x, y] of bars.points) {
      if (y > 0) { ctx.fillRect(X(x) - bw / 2, Y(y), bw, H - B - Y(y)); drawn++; }
    }
  }
  for (const l of lines) {
    ctx.strokeStyle = l.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;
    for (const [x, y] of l.points) {
      if (y === null || y === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(X(x), Y(y)); else ctx.moveTo(X(x), Y(y));
      pen = true;
      drawn++;
    }
    ctx.stroke();
  }
  canvas.dataset.drawn = String(drawn);
}

// rolling returns the hit rate over the last n seconds at each point, null where no
// prompt was routed in that span.
// hitKey and promptKey name the series fields (default: the predicted hit rate of every
// routed prompt).
function rolling(series, n, hitKey = 'predicted_hit_tokens', promptKey = 'prompt_tokens') {
  const out = [];
  let hit = 0, prompt = 0;
  for (let i = 0; i < series.length; i++) {
    hit += series[i][hitKey]; prompt += series[i][promptKey];
    if (i >= n) { hit -= series[i - n][hitKey]; prompt -= series[i - n][promptKey]; }
    out.push([series[i].t, prompt > 0 ? hit / prompt : null]);
  }
  return out;
}

// hitLines are the predicted hit rate and, over the answers that reported cached tokens,
// the predicted and the engines' reported rates side by side.
function hitLines(series) {
  return [ // the predicted rate of every routed prompt last: on top
    { color: '#a0aec0', points: rolling(series, 10, 'reported_predicted_tokens', 'reported_prompt_tokens') },
    { color: '#38a169', points: rolling(series, 10, 'reported_cached_tokens', 'reported_prompt_tokens') },
    { color: '#2b6cb0', points: rolling(series, 10) },
  ];
}

function drawHitChart(canvas, series) {
  chart(canvas, { lines: hitLines(series), yMax: 1, yFmt: (y) => Math.round(100 * y) + '%' });
}

function drawTTFTChart(canvas, series) {
  chart(canvas, {
    lines: [
      { color: '#2b6cb0', points: series.map((p) => [p.t, p.ttft_p50_ms]) },
      { color: '#d69e2e', points: series.map((p) => [p.t, p.ttft_p95_ms]) },
    ],
    yFmt: (y) => y < 10 ? y.toFixed(1) : Math.round(y).toString(),
  });
}

function renderWorkers(o) {
  const tb = document.querySelector('#workers tbody');
  const rows = o.workers.map((w) => {
    const tr = w.traffic || {};
    const feed = (w.feeds || [])[0];
    const kv = w.engine ? w.engine.kv_usage : null;
    const ix = w.index ? w.index.blocks : null;
    const cell = (field, v, title) => el('td', { 'data-field': field, title }, v);
    const actions = el('td', { 'data-field': 'actions' },
      w.drained
        ? el('button', { class: 'act', 'data-action': 'undrain', onclick: (e) => act(e, w.id, 'undrain') }, 'undrain')
        : el('button', { class: 'act', 'data-action': 'drain', onclick: (e) => act(e, w.id, 'drain') }, 'drain'),
      ' ',
      el('button', { class: 'act', 'data-action': 'clear', onclick: (e) => act(e, w.id, 'clear'), title: "drop this worker's prefix-index entries" }, 'clear index'));
    return el('tr', { 'data-worker': w.id, class: state.selected === w.id ? 'selected' : '', onclick: () => select(w.id) },
      cell('id', w.id, w.url),
      el('td', { 'data-field': 'state' }, el('span', { class: 'badge st-' + w.state, title: w.last_error || '' }, w.state)),
      cell('source', w.source, w.joined ? 'joined ' + new Date(w.joined).toLocaleString() : ''),
      cell('in_flight', fmtInt(w.in_flight)),
      cell('pending_prefill_tokens', fmtInt(w.pending_prefill_tokens)),
      el('td', { 'data-field': 'kv_usage' }, kv === null ? '–' : el('span', { class: 'bar' }, el('span', { style: `width:${Math.round(100 * kv)}%` })), kv === null ? '' : fmtPct(kv)),
      cell('indexed_blocks', ix ? `${fmtInt(ix.gpu)} / ${fmtInt(ix.cpu)} / ${fmtInt(ix.disk)}` : '–'),
      cell('predicted', w.index ? fmtInt(w.index.predicted) : '–'),
      cell('event_seq', feed && feed.seq !== null ? fmtInt(feed.seq) : '–', feed ? feed.endpoint : 'no event feed'),
      el('td', { 'data-field': 'lag', title: feed ? `last event ${fmtSec(feed.last_event_age_seconds)} ago · epoch ${feed.epoch}` : '' },
        feed ? fmtSec(feed.lag_seconds) : '–',
        w.events_stale ? el('span', { class: 'badge st-stale', title: "the event feed lags or is silent beyond events.max_staleness while the worker serves: its cached blocks count as predictions until it catches up" }, 'stale') : ''),
      cell('gaps', feed ? fmtInt(feed.gaps) : '–', feed ? `replays ${feed.replays}, resets ${feed.resets}` : ''),
      cell('routed', fmtInt(tr.routed)),
      cell('hit_rate', fmtPct(tr.hit_rate)),
      el('td', { 'data-field': 'reported_hit_rate', title: tr.reported ? `engine-reported over ${tr.reported.answers} answers; predicted ${fmtPct(tr.reported.predicted_hit_rate)} for them` : '' },
        fmtPct(tr.reported && tr.reported.reported_hit_rate),
        tr.prediction_drift ? el('span', { class: 'badge st-drift', title: 'the engine reports far fewer cached tokens than predicted: check block size, tokenizer, chat template, adapter names, salt' }, 'drift') : ''),
      actions);
  });
  tb.replaceChildren(...rows);
}

async function act(e, id, action) {
  e.stopPropagation();
  try {
    const r = await post('api/workers/' + encodeURIComponent(id) + '/' + action);
    setMsg(`${action} ${id}: ${r.changed ? 'done' : 'no change'}${action === 'clear' ? ` (${r.cleared} index entries)` : ''}; now ${r.state.state}`);
  } catch (err) {
    setMsg(`${action} ${id} failed: ${err.message}`, true);
  }
}

document.getElementById('reload').addEventListener('click', async () => {
  try {
    const r = await post('api/reload');
    setMsg(r.unchanged ? `reload: ${r.file} matches the running config`
      : `reload: applied [${r.applied.join('; ') || 'nothing'}]; restart required for [${r.restart_required.join('; ') || 'nothing'}]`);
  } catch (err) {
    setMsg('reload failed: ' + err.message, true);
  }
});

function select(id) {
  state.selected = state.selected === id ? null : id;
  document.getElementById('drill').hidden = !state.selected;
  document.querySelectorAll('#workers tbody tr').forEach((tr) => tr.classList.toggle('selected', tr.dataset.worker === state.selected));
  if (state.selected) document.getElementById('drill-id').textContent = id;
}
document.getElementById('drill-close').addEventListener('click', () => select(state.selected));

function renderDrill(w) {
  if (!w || w.id !== state.selected) return;
  const facts = [
    ['url', w.url], ['state', w.state], ['source · joined', `${w.source} · ${w.joined ? new Date(w.joined).toLocaleString() : '–'}`],
    ['models (base)', `${(w.models || []).join(', ')}${w.base_model ? ' (' + w.base_model + ')' : ''}`],
    ['in flight', fmtInt(w.in_flight)], ['pending prefill tokens', fmtInt(w.pending_prefill_tokens)], ['active KV blocks (router)', fmtInt(w.active_blocks)],
  ];
  if (w.engine) facts.push(['engine running / waiting', `${w.engine.running} / ${w.engine.waiting}`], ['engine KV usage', fmtPct(w.engine.kv_usage)], ['block size · blocks', `${w.engine.block_size} · ${fmtInt(w.engine.num_blocks)}`],
    ['engine prefix-cache hit rate (since it started)', fmtPct(w.engine.prefix_cache_hit_rate)]);
  if (w.index) facts.push(['indexed blocks gpu/cpu/disk', `${fmtInt(w.index.blocks.gpu)} / ${fmtInt(w.index.blocks.cpu)} / ${fmtInt(w.index.blocks.disk)}`], ['predicted blocks', fmtInt(w.index.predicted)]);
  for (const f of w.feeds || []) {
    facts.push([`events rank ${f.rank}`, `${f.connected ? 'connected' : 'down'} · seq ${f.seq ?? '–'} · ${fmtInt(f.batches)} batches · gaps ${f.gaps} · replays ${f.replays} · resets ${f.resets}${f.last_reset ? ' (' + f.last_reset + ')' : ''} · epoch ${f.epoch}`]);
    if (f.stale) facts.push([`events rank ${f.rank} stale since`, `${new Date(f.stale_since).toLocaleTimeString()} (lag ${fmtSec(f.lag_seconds)}, last event ${fmtSec(f.last_event_age_seconds)} ago): cached blocks count as predictions`]);
    if (f.last_error) facts.push(['events error', f.last_error]);
  }
  const t = w.traffic || {};
  facts.push(['routed · errors', `${fmtInt(t.routed)} · ${fmtInt(t.errors)}`], ['hit rate (since start · 5m)', `${fmtPct(t.hit_rate)} · ${fmtPct(t.window_5m && t.window_5m.hit_rate)}`],
    ['TTFT p50 / p99 (5m)', t.window_5m ? `${fmtMs(t.window_5m.ttft.p50_ms)} / ${fmtMs(t.window_5m.ttft.p99_ms)}` : '–']);
  if (w.last_error) facts.push(['last error', w.last_error]);
  if (w.drained) facts.push(['drained since', new Date(w.drained_since).toLocaleTimeString()]);
  for (const c of (w.changes || []).slice(-8)) facts.push([new Date(c.time).toLocaleTimeString(), c.state + (c.detail ? ' · ' + c.detail : '')]);
  document.getElementById('drill-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  const s = t.series || [];
  const maxRouted = Math.max(1, ...s.map((p) => p.routed));
  chart(document.getElementById('drill-chart'), {
    bars: { color: '#cbd5e0', points: s.map((p) => [p.t, p.routed / maxRouted]) },
    lines: hitLines(s),
    yMax: 1, yFmt: (y) => `${Math.round(100 * y)}% · ${(y * maxRouted).toFixed(0)}/s`,
  });
}

function renderHeatmap(o) {
  const table = document.getElementById('heatmap');
  const ids = o.workers.map((w) => w.id);
  const ps = o.prefixes || [];
  table.tHead.replaceChildren(el('tr', {}, el('th', {}, 'prefix (last block hash)'), el('th', {}, 'depth (blocks)'), el('th', {}, 'requests (est.)'),
    ...ids.map((id) => el('th', { 'data-worker': id }, id))));
  const maxReq = Math.max(1, ...ps.map((p) => p.requests_estimate));
  const rows = ps.map((p) => {
    const shade = 0.25 + 0.75 * p.requests_estimate / maxReq;
    return el('tr', { 'data-prefix': p.hash },
      el('td', { class: 'code' }, p.hash.padStart(16, '0').slice(0, 12)),
      el('td', {}, fmtInt(p.depth)),
      el('td', {}, fmtInt(p.requests_estimate)),
      ...ids.map((id) => {
        const held = p.workers.some((k) => k === id || k.startsWith(id + '#'));
        return el('td', {
          class: 'cell' + (held ? ' held' : ''), 'data-worker': id, 'data-held': held ? '1' : '0',
          style: held ? `background: rgba(43,108,176,${shade.toFixed(2)})` : '',
          title: held ? `${id} holds this ${p.depth}-block prefix` : '',
        }, held ? '■' : '');
      }));
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colSpan: 3 + ids.length, class: 'muted' }, 'no shared prefix matched yet (one index match in 64 is sampled)')));
  table.tBodies[0].replaceChildren(...rows);
}

function renderDecisions(ds) {
  const rows = [];
  for (const d of ds) {
    rows.push(el('tr', { 'data-request': d.request_id },
      el('td', {}, new Date(d.time).toLocaleTimeString()),
      el('td', { class: 'code' }, d.request_id),
      el('td', {}, d.model),
      el('td', { 'data-field': 'chosen' }, d.phase ? `${d.chosen} (${d.phase})` : d.chosen),
      el('td', {}, `${d.blocks}${d.exact ? '' : ' ~'}`),
      el('td', {}, d.explanation)));
    const f = (v, w) => (v === null || v === undefined ? '∞' : v.toFixed(1)).padStart(w);
    const lines = (d.candidates || []).map((c) => `${c.worker === d.chosen ? '→' : ' '} ${c.worker.padEnd(12)} overlap ${String(c.overlap_blocks).padStart(4)}  in-flight ${String(c.in_flight).padStart(3)}  prefill ${f(c.prefill_cost, 7)}  decode ${f(c.decode_cost, 7)}  queue ${f(c.queue_cost, 6)}  total ${f(c.total_cost, 7)}${c.load_guarded ? '  (over the load guard)' : ''}`);
    rows.push(el('tr', { class: 'cands-row' }, el('td', {}), el('td', { colSpan: 5, class: 'cands' }, lines.join('\n'))));
  }
  document.querySelector('#decisions tbody').replaceChildren(...rows);
}

poll();
