// The console's script: live charts from /stats, the backends table from /backends, the
// session search from /sessions, and the buttons. Data enters the page only through
// textContent and setAttribute, never innerHTML: user names are chosen by whoever logs in.
'use strict';

const CSRF = document.querySelector('meta[name="csrf"]').content;
const SVG_NS = 'http://www.w3.org/2000/svg';
const W = 600, H = 120;           // the charts' viewBox
const PAD = 16;                   // room for the labels above and below the lines
const ZERO = H - PAD;             // where a value of 0 is drawn
const SPAN_MS = 300 * 1000;       // what a chart spans: the sampler's five minutes
const REFRESH_MS = 2000;
// Login results in a fixed order, so that each keeps its colour (see console.css).
const RESULTS = ['ok', 'reused', 'failed', 'unavailable', 'limit', 'throttled'];

const $ = (selector) => document.querySelector(selector);
let backendNames = [];

/** An HTML element with attributes and text, all set as data, never parsed. */
function el(tag, attrs = {}, text = '') {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.textContent = text;
  return node;
}

function svgEl(tag, attrs, text = '') {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.textContent = text;
  return node;
}

function say(text, bad = false) {
  $('#message').textContent = text;
  $('#message').className = bad ? 'bad' : '';
}

async function getJson(path) {
  const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) throw new Error('logged out: reload the page to log in again');
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

/** A state change, with the anti-CSRF header; `done` words the answer for the operator. */
async function act(method, path, done) {
  try {
    const r = await fetch(path, {
      method, credentials: 'same-origin', headers: { 'X-Imapproxy-Csrf': CSRF },
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    say(done(body));
  } catch (e) {
    say(`${method} ${path} failed: ${e.message}`, true);
  }
  await Promise.all([refresh(), loadSessions()]);
}

document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const { action, backend, user } = button.dataset;
  const b = encodeURIComponent(backend || ''), u = encodeURIComponent(user || '');
  switch (action) {
    case 'drain':
      return act('POST', `/backends/${b}/drain`, (r) => `${r.name} is draining`);
    case 'migrate':
      return act('POST', `/backends/${b}/drain?migrate=true`,
        (r) => `${r.name} is draining; ${r.migrating} sessions moving to other backends`);
    case 'undrain':
      return act('POST', `/backends/${b}/undrain`, (r) => `${r.name} is up`);
    case 'kick':
      return act('POST', `/users/${u}/kick`, (r) => `${r.user}: ${r.kicked} sessions ended`);
    case 'move': {
      const to = button.closest('tr').querySelector('select').value;
      return act('POST', `/users/${u}/move?backend=${encodeURIComponent(to)}`,
        (r) => `${r.user} now goes to ${r.backend}; ${r.migrating} sessions moving`);
    }
  }
});

// ---- Tables ----

function button(action, label, data, enabled = true) {
  const node = el('button', { type: 'button', 'data-action': action }, label);
  Object.assign(node.dataset, data);
  node.disabled = !enabled;
  return node;
}

/** A backend row, as the server draws it: `<tr class="{health}"><td>{name}</td>…`. */
function backendRow(b) {
  const tr = el('tr', { class: b.health });
  for (const v of [b.name, b.addr, b.health, b.sessions, b.warm_connections, b.weight, b.max_connections]) {
    tr.append(el('td', {}, String(v)));
  }
  const draining = b.health === 'draining', data = { backend: b.name };
  const actions = el('td');
  actions.append(button('drain', 'drain', data, !draining), ' ',
    button('migrate', 'drain + move sessions', data, !draining), ' ',
    button('undrain', 'undrain', data, draining));
  tr.append(actions);
  return tr;
}

function renderBackends(data) {
  backendNames = data.backends.map((b) => b.name);
  $('#sessions').textContent = String(data.client_sessions);
  $('#backends tbody').replaceChildren(...data.backends.map(backendRow));
  const p = data.pool;
  const row = el('tr');
  for (const v of [p.idle_sessions, p.slots_in_use, p.waiting, p.hits, p.misses, p.waits, p.timeouts]) {
    row.append(el('td', {}, String(v)));
  }
  $('#pool tbody').replaceChildren(row);
}

function age(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor(s % 3600 / 60)}m`;
}

function sessionRow(s) {
  const tr = el('tr');
  tr.append(el('td', {}, String(s.user)), el('td', { class: 'proxy' }, String(s.proxy ?? '')));
  for (const v of [s.backend, s.client, age(s.seconds)]) tr.append(el('td', {}, String(v)));
  const select = el('select', { 'aria-label': 'move to' });
  select.append(...backendNames.map((name) => el('option', {}, name)));
  const actions = el('td');
  actions.append(button('kick', 'kick', { user: s.user }), ' ', select, ' ',
    button('move', 'move', { user: s.user }));
  tr.append(actions);
  return tr;
}

const MAX_ROWS = 200;

/** The sessions whose user contains the search text, any case. Not refreshed on a timer, so
 *  that a backend picked for a move stays picked. */
async function loadSessions() {
  try {
    if (!backendNames.length) renderBackends(await getJson('/backends'));
    const needle = $('#user').value.trim().toLowerCase();
    const view = await getJson('/sessions');
    const all = view.sessions;
    $('#session-list').classList.toggle('fleet', 'fleet' in view);
    const found = all.filter((s) => String(s.user).toLowerCase().includes(needle));
    const shown = found.slice(0, MAX_ROWS);
    $('#session-list tbody').replaceChildren(...shown.map(sessionRow));
    $('#session-count').textContent = `${found.length} of ${all.length} sessions` +
      (shown.length < found.length ? `, the first ${shown.length} shown` : '');
  } catch (e) {
    say(e.message, true);
  }
}

let searchTimer;
$('#user').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(loadSessions, 250);
});
$('#search').addEventListener('submit', (event) => {
  event.preventDefault();
  loadSessions();
});

// ---- Charts ----

const perSecond = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)}/s`;
const count = (v) => String(Math.round(v));
const millis = (v) => `${(v * 1000).toPrecision(3)} ms`;
function bytesPerSecond(v) {
  const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Runs of consecutive non-null points: a gap in the data stays a gap in the line. */
function runs(points) {
  const out = [[]];
  for (const p of points) {
    if (p === null) { if (out[out.length - 1].length) out.push([]); } else out[out.length - 1].push(p);
  }
  return out.filter((r) => r.length);
}

/**
 * Draws `series` ([name, colour, value-of-sample]) over the last five minutes into
 * #chart-{id}, scaled to the largest value, with the newest values in #legend-{id}.
 * Each line carries data-series and data-max, and the chart data-zero (the y of 0), which the
 * browser test reads.
 */
function chart(id, samples, series, format) {
  const end = samples[samples.length - 1].t;
  const x = (t) => (W - (end - t) * W / SPAN_MS).toFixed(1);
  const values = series.map(([, , value]) => samples.map((s) => value(s) ?? null));
  const max = Math.max(0, ...values.flat().filter((v) => v !== null));
  const top = max > 0 ? max : 1;
  const y = (v) => (ZERO - v * (H - 2 * PAD) / top).toFixed(1);
  const nodes = [];
  series.forEach(([name, colour], i) => {
    const points = samples.map((s, j) => (values[i][j] === null ? null : `${x(s.t)},${y(values[i][j])}`));
    const seriesMax = Math.max(0, ...values[i].filter((v) => v !== null));
    for (const run of runs(points)) {
      nodes.push(svgEl('polyline', {
        class: `c${colour}`, points: run.join(' '), 'data-series': name, 'data-max': String(seriesMax),
      }));
    }
  });
  nodes.push(svgEl('text', { x: 4, y: 12 }, `max ${format(max)}`));
  nodes.push(svgEl('text', { x: 4, y: H - 3 }, '5 min ago'));
  nodes.push(svgEl('text', { x: W - 4, y: H - 3, 'text-anchor': 'end' }, 'now'));
  const svg = document.getElementById(`chart-${id}`);
  svg.setAttribute('data-zero', String(ZERO));
  svg.replaceChildren(...nodes);
  document.getElementById(`legend-${id}`).replaceChildren(...series.map(([name, colour], i) => {
    const last = values[i][values[i].length - 1];
    return el('span', { class: `c${colour}` }, `${name} ${last === null ? '–' : format(last)}`);
  }));
}

function drawCharts(stats) {
  const s = stats.samples;
  if (!s.length) return;
  const colour = (r) => (RESULTS.includes(r) ? RESULTS.indexOf(r) : RESULTS.length);
  const results = [...new Set(s.flatMap((x) => Object.keys(x.logins_per_s)))]
    .sort((a, b) => colour(a) - colour(b) || a.localeCompare(b));
  chart('sessions', s, [['open', 1, (x) => x.sessions]], count);
  chart('logins', s, results.map((r) => [r, colour(r), (x) => x.logins_per_s[r] ?? 0]), perSecond);
  chart('latency', s, [['p50', 1, (x) => x.login_p50], ['p99', 5, (x) => x.login_p99]], millis);
  chart('bytes', s, [['from clients', 0, (x) => x.bytes_in_per_s],
    ['to clients', 1, (x) => x.bytes_out_per_s]], bytesPerSecond);
  $('#latency-over').textContent = `(${stats.latency_over})`;
  $('#latency-over').className = 'note';
}

async function refresh() {
  try {
    const [stats, backends] = await Promise.all([getJson('/stats'), getJson('/backends')]);
    drawCharts(stats);
    renderBackends(backends);
  } catch (e) {
    say(e.message, true);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
