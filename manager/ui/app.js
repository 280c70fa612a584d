// The micado dashboard. Plain JavaScript, no dependencies: it polls the
// manager's /v1 API with the bearer token and redraws when something changed.
//
// The token comes from the URL fragment (#token=...), which browsers never
// send to the server; the page keeps it in sessionStorage (this tab only)
// and removes it from the address bar at once.
'use strict';

(() => {
  const TOKEN_KEY = 'micado.token';
  const POLL_MS = 1500;
  // The autoscaling view (an hour of history, ~35 KB per scaled service)
  // changes once per autoscaler round (5 s): fetched at that pace only.
  const AUTO_MS = 5000;
  let lastAutoAt = 0;
  const MAX_EVENTS = 60;

  const $ = (id) => document.getElementById(id);
  let memToken = null; // when sessionStorage is unavailable
  let token = null;
  let lastSeq = 0;
  let events = [];
  let lastDrawn = '';
  let lastAuto = '';
  let timer = null;

  // --- token -------------------------------------------------------------

  function storeGet() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return memToken; }
  }
  function storeSet(t) {
    memToken = t;
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* keep it in memory */ }
  }

  // takeToken moves a token from the fragment into sessionStorage and
  // clears the fragment from the address bar and the history entry.
  function takeToken() {
    const frag = location.hash.replace(/^#/, '');
    if (frag) {
      const t = new URLSearchParams(frag).get('token');
      if (t !== null) {
        if (t) storeSet(t);
        history.replaceState(null, '', location.pathname + location.search);
      }
    }
    return storeGet();
  }

  // --- API ---------------------------------------------------------------

  class APIError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }

  async function api(path) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let r;
    try {
      r = await fetch(path, { headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' });
    } catch (e) {
      throw new APIError(0, 'cannot reach the manager (' + e.message + ')');
    }
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new APIError(r.status, (body && body.error) || r.status + ' ' + r.statusText);
    return body;
  }

  // --- formatting ----------------------------------------------------------

  // bytes formats as the CLI and every message do (package bytesize): exact
  // with at most two decimals in a binary unit of which the size is 1 to
  // 9999.99 (1.5GiB, 1025MiB), else in such an SI unit (1GB), else rounded
  // to two decimals of the largest binary unit (857.62MiB); 512B.
  function bytes(n) {
    n = Math.round(Number(n) || 0);
    const neg = n < 0 ? '-' : '';
    n = Math.abs(n);
    if (n < 1024) return neg + n + 'B';
    const fixed = (h, name) => neg + (h / 100).toFixed(2).replace(/\.?0+$/, '') + name;
    const binary = [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]];
    const si = [['TB', 1e12], ['GB', 1e9], ['MB', 1e6], ['KB', 1e3]];
    for (const units of [binary, si]) {
      for (const [name, m] of units) {
        if (n < m || Math.floor(n / m) >= 10000) continue;
        if (((n % m) * 100) % m === 0) return fixed((n * 100) / m, name);
      }
    }
    for (const [name, m] of binary) {
      if (n >= m) return fixed(Math.round((n * 100) / m), name);
    }
    return neg + n + 'B';
  }
  const pct = (part, whole) => (whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0);
  const byName = (a, b) => String(a).localeCompare(String(b), undefined, { numeric: true });
  const roleOf = (tags) => {
    for (const t of tags || []) if (t.startsWith('role=')) return t.slice(5);
    return '';
  };
  const clock = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
  };

  // h builds an element: h('div', {class: 'x', dataset: {a: 1}}, child, 'text', ...).
  // Text is always set as text, never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'width') el.style.width = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const badge = (kind, text, title) => h('span', { class: 'badge b-' + kind, title }, text);

  // --- drawing -------------------------------------------------------------

  function drawSummary(st, nodes, cs) {
    $('cluster').textContent = st.cluster ? 'cluster ' + st.cluster : '';
    const alive = nodes.filter((n) => n.status === 'alive').length;
    const count = (s) => cs.filter((c) => c.state === s).length;
    const items = [
      ['workers', alive + (alive === nodes.length ? '' : ' / ' + nodes.length)],
      ['running', count('running')],
      ['pending', count('pending')],
    ];
    if (count('failed')) items.push(['failed', count('failed')]);
    if (st.leader) items.push(['leader', st.leader + (st.managers > 1 ? ' of ' + st.managers + ' managers' : '')]);
    items.push(['strategy', st.strategy || '']);
    items.push(['version', st.version || '']);
    $('summary').replaceChildren(...items.map(([k, v]) => h('span', { class: 'stat' }, h('b', {}, String(v)), ' ' + k)));
  }

  function memBar(n) {
    const cap = n.capacity;
    const used = Math.max(0, n.used);
    const title = `used ${bytes(used)}, reserved ${bytes(n.reserved)}, free ${bytes(n.free)} (placement headroom excluded), capacity ${bytes(cap)}`;
    return h('div', { class: 'mem' },
      h('div', { class: 'bar', title, role: 'img', 'aria-label': title },
        h('div', { class: 'bar-reserved', width: pct(n.reserved, cap) + '%' }),
        h('div', { class: 'bar-used' + (used > n.reserved ? ' over' : ''), width: pct(used, cap) + '%' })),
      h('div', { class: 'mem-figures' },
        h('span', { class: 'fig fig-used' }, 'used ', h('b', {}, bytes(used))),
        h('span', { class: 'fig fig-reserved' }, 'reserved ', h('b', {}, bytes(n.reserved))),
        h('span', { class: 'fig fig-free' }, 'free ', h('b', {}, bytes(n.free))),
        h('span', { class: 'fig fig-capacity' }, 'of ', h('b', {}, bytes(cap)))));
  }

  function healthBadge(c) {
    if (!c.health) return badge('none', c.state === 'running' ? 'unregistered' : '–');
    return badge(c.health, c.health);
  }

  function address(c) {
    const b = (c.bindings || [])[0];
    if (c.address && b && b.host) return c.address + ':' + b.host;
    return c.address || '';
  }

  function containerTable(list) {
    if (!list.length) return h('div', { class: 'empty' }, 'no containers');
    return h('table', { class: 'containers' },
      h('thead', {}, h('tr', {}, h('th', {}, 'container'), h('th', {}, 'state'), h('th', {}, 'health'), h('th', { class: 'num' }, 'memory'), h('th', {}, 'address'))),
      h('tbody', {}, list.map((c) => h('tr', { class: 'container', dataset: { container: c.name, state: c.state, health: c.health || '' } },
        h('td', { class: 'name', title: c.image }, c.name, c.pinned ? h('span', { class: 'pin', title: 'pinned: never moved by scale-in' }, ' ●') : null),
        h('td', {}, badge(c.state, c.state, c.reason || c.placement), c.move ? badge('moving', '→ ' + c.move.node) : null),
        h('td', {}, healthBadge(c)),
        h('td', { class: 'num' }, bytes(c.memory)),
        h('td', { class: 'addr' }, address(c))))));
  }

  function workerCard(n, cs) {
    const tags = (n.tags || []).filter((t) => !t.startsWith('role='));
    return h('article', { class: 'worker', dataset: { worker: n.name, status: n.status } },
      h('header', {},
        h('span', { class: 'wname' }, n.name),
        badge(n.status, n.status),
        n.draining ? badge('draining', 'draining') : null,
        tags.map((t) => h('span', { class: 'tag' }, t)),
        h('span', { class: 'wmeta', title: '1-minute load average per core' }, `load ${(n.cpu || 0).toFixed(2)} · ${cs.length} container${cs.length === 1 ? '' : 's'}`)),
      memBar(n),
      containerTable(cs));
  }

  function drawWorkers(nodes, cs) {
    const byNode = new Map();
    for (const c of cs) {
      if (c.state === 'pending' || c.state === 'failed' || !c.node) continue;
      if (!byNode.has(c.node)) byNode.set(c.node, []);
      byNode.get(c.node).push(c);
    }
    for (const l of byNode.values()) l.sort((a, b) => byName(a.name, b.name));
    const roles = new Map();
    for (const n of nodes.slice().sort((a, b) => byName(a.name, b.name))) {
      const r = roleOf(n.tags);
      if (!roles.has(r)) roles.set(r, []);
      roles.get(r).push(n);
    }
    const known = new Set(nodes.map((n) => n.name));
    const sections = [...roles.keys()].sort((a, b) => (a === '') - (b === '') || byName(a, b)).map((r) => {
      const ws = roles.get(r);
      const cap = ws.reduce((s, n) => s + n.capacity, 0);
      const res = ws.reduce((s, n) => s + n.reserved, 0);
      return h('section', { class: 'role', dataset: { role: r } },
        h('h3', {}, r ? h('span', {}, 'role=', h('b', {}, r)) : h('span', {}, 'no role'),
          h('span', { class: 'role-meta' }, `${ws.length} worker${ws.length === 1 ? '' : 's'} · ${bytes(res)} reserved of ${bytes(cap)}`)),
        h('div', { class: 'cards' }, ws.map((n) => workerCard(n, byNode.get(n.name) || []))));
    });
    const orphans = [...byNode.entries()].filter(([n]) => !known.has(n));
    if (orphans.length) {
      sections.push(h('section', { class: 'role orphans', dataset: { role: '' } },
        h('h3', {}, h('span', {}, 'on workers no longer known')),
        h('div', { class: 'cards' }, orphans.map(([n, l]) => h('article', { class: 'worker', dataset: { worker: n, status: 'unknown' } },
          h('header', {}, h('span', { class: 'wname' }, n), badge('dead', 'unknown')), containerTable(l))))));
    }
    if (!sections.length) sections.push(h('div', { class: 'empty big' }, 'No workers have joined yet.'));
    $('workers').replaceChildren(...sections);
  }

  function drawPending(cs) {
    const list = cs.filter((c) => c.state === 'pending' || c.state === 'failed').sort((a, b) => byName(a.name, b.name));
    $('pending-count').textContent = list.length ? String(list.length) : '';
    if (!list.length) {
      $('pending').replaceChildren(h('div', { class: 'empty' }, 'Nothing is waiting: every request has a worker.'));
      return;
    }
    $('pending').replaceChildren(...list.map((c) => {
      // A held request's reason is "why no worker fits; what it waits
      // for", or only "waiting for instance X (...) to join".
      let why = c.reason || 'no reason recorded yet';
      let waits = '';
      const m = c.state === 'pending' && /^([\s\S]*); ((?:waiting|asking|scale-out)\b[\s\S]*)$/.exec(why);
      if (m) [why, waits] = [m[1], m[2]];
      else if (c.waiting_for) [why, waits] = ['', why];
      return h('div', { class: 'pending', dataset: { container: c.name, state: c.state } },
        h('div', { class: 'p-head' },
          h('span', { class: 'name' }, c.name), badge(c.state, c.state),
          h('span', { class: 'p-req' }, `${bytes(c.memory)} · ${(c.tags || []).join(', ') || 'any worker'}`)),
        why ? h('div', { class: 'reason' }, why) : null,
        waits ? h('div', { class: 'waiting' }, waits) : null);
    }));
  }

  function drawEvents() {
    const ol = $('events');
    if (!events.length) {
      ol.replaceChildren(h('li', { class: 'empty' }, 'No events yet.'));
      return;
    }
    ol.replaceChildren(...events.slice().reverse().map((e) => h('li', { class: 'event', dataset: { seq: e.seq, kind: e.kind } },
      h('time', { datetime: e.time, title: e.time }, clock(e.time)),
      h('span', { class: 'kind k-' + e.kind }, e.kind),
      h('span', { class: 'subject' }, e.subject),
      h('span', { class: 'msg' }, e.message))));
  }

  // --- autoscaling -----------------------------------------------------------
  //
  // GET /v1/autoscale?history=1: every scaled service's last hour (a point
  // per autoscaler round), the workers per role and the node usage alerts.
  // The charts are inline SVG built node by node; every string from the API
  // goes in as text.

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const HOUR = 3600;
  const CW = 400; // chart width in viewBox units
  const PL = 34; // left margin (value ticks)
  const PR = 8; // right margin
  const PW = CW - PL - PR;

  // svg builds an SVG element like h does an HTML one.
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const fin = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);
  const trimNum = (v, p) => v.toFixed(p).replace(/\.0+$|(\.\d*?)0+$/, '$1');
  // num formats a metric value compactly: 72.5, 1.2k, 3M.
  function num(v) {
    v = fin(v);
    const a = Math.abs(v);
    if (a >= 1e6) return trimNum(v / 1e6, 1) + 'M';
    if (a >= 1e4) return trimNum(v / 1e3, 1) + 'k';
    if (a >= 100) return String(Math.round(v));
    if (a >= 10) return trimNum(v, 1);
    return trimNum(v, 2);
  }
  const isPct = (metric) => metric === 'cpu' || metric === 'memory';
  const metricText = (metric, v) => num(v) + (isPct(metric) ? '%' : '');
  const frac = (f) => trimNum(fin(f) * 100, 1) + '%';
  const hhmm = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });

  // seconds reads a Go duration ("5s", "1m30s", "500ms").
  function seconds(d) {
    const unit = { ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
    let s = 0;
    for (const m of String(d || '').matchAll(/([\d.]+)(ns|us|µs|ms|s|m|h)/g)) s += parseFloat(m[1]) * unit[m[2]];
    return s;
  }
  function duration(sec) {
    sec = Math.round(fin(sec));
    if (sec >= 3600 && sec % 3600 === 0) return sec / 3600 + 'h';
    if (sec >= 60 && sec % 60 === 0) return sec / 60 + 'm';
    return sec + 's';
  }

  // niceStep is a round step (1, 2, 2.5, 5 × 10^k) that cuts span into
  // about n parts.
  function niceStep(span, n) {
    const raw = span > 0 ? span / n : 1;
    const p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5]) if (m * p >= raw - 1e-12) return m * p;
    return 10 * p;
  }

  // scale maps [0, top] onto a plot band [y, y+hgt] (0 at the bottom),
  // with round ticks; integers only when ints.
  function scale(top, y, hgt, n, ints) {
    top = Math.max(fin(top), ints ? 1 : 1e-9);
    let step = niceStep(top, n);
    if (ints) step = Math.max(1, Math.ceil(step));
    top = Math.ceil(top / step - 1e-9) * step;
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);
    return { top, ticks, y: (v) => y + hgt - (Math.max(0, Math.min(top, fin(v))) / top) * hgt };
  }

  // Series are split where rounds are missing (more than three intervals
  // apart: a leader change, a paused manager) rather than bridged.
  function runs(pts, gap, keep) {
    const out = [];
    let cur = [];
    let prev = null;
    for (const p of pts) {
      if (!keep(p) || (prev && p.t - prev.t > gap)) {
        if (cur.length) out.push(cur);
        cur = [];
      }
      if (keep(p)) cur.push(p);
      prev = p;
    }
    if (cur.length) out.push(cur);
    return out;
  }
  const xy = (x, y) => x.toFixed(1) + ',' + y.toFixed(1);
  // stepPoints draws a value held from each point to the next.
  function stepPoints(run, x, y, val) {
    const out = [];
    run.forEach((p, i) => {
      if (i > 0) out.push(xy(x(p.t), y(val(run[i - 1]))));
      out.push(xy(x(p.t), y(val(p))));
    });
    return out.join(' ');
  }
  const linePoints = (run, x, y, val) => run.map((p) => xy(x(p.t), y(val(p)))).join(' ');

  // band draws a plot band's frame: value ticks, grid lines and its label.
  function band(g, sc, label) {
    for (const v of sc.ticks) {
      const y = sc.y(v);
      g.append(svg('line', { class: 'grid', x1: PL, x2: CW - PR, y1: y, y2: y }),
        svg('text', { class: 'tick', x: PL - 4, y: y + 3, 'text-anchor': 'end' }, num(v)));
    }
    g.append(svg('text', { class: 'plabel', x: PL, y: sc.y(sc.top) - 4 }, label));
  }

  // timeAxis draws HH:MM ticks every 15 minutes of [end-1h, end] under
  // the bands (each [top, bottom]), the last of which carries the axis.
  function timeAxis(g, x, end, bands) {
    const bottom = bands[bands.length - 1][1];
    for (let t = Math.ceil((end - HOUR) / 900) * 900; t <= end; t += 900) {
      const px = x(t);
      const anchor = px < PL + 14 ? 'start' : px > CW - PR - 14 ? 'end' : 'middle';
      for (const [y1, y2] of bands) g.append(svg('line', { class: 'grid vgrid', x1: px, x2: px, y1, y2 }));
      g.append(svg('text', { class: 'tick', x: px, y: bottom + 11, 'text-anchor': anchor }, hhmm(t)));
    }
    g.append(svg('line', { class: 'axis', x1: PL, x2: CW - PR, y1: bottom, y2: bottom }));
  }

  // mark draws the newest point as a dot with its value beside it (so
  // that a series of one point shows too).
  function mark(g, cx, cy, cls, text, bandTop) {
    g.append(svg('circle', { class: 'dot ' + cls, cx, cy, r: 2.6 }),
      svg('text', { class: 'vlabel', x: cx - 4, y: cy - 8 < bandTop ? cy + 11 : cy - 5, 'text-anchor': 'end' }, text));
  }

  function noData(g, y, text) {
    g.append(svg('text', { class: 'nodata', x: PL + PW / 2, y, 'text-anchor': 'middle' }, text));
  }

  // The metric a policy's series carries: its first (cpu, memory, query).
  function seriesMetric(p) {
    const m = (p.metrics || [])[0];
    if (m && m.name) return m.name;
    const sc = p.scaling || {};
    return sc.cpu > 0 ? 'cpu' : sc.memory > 0 ? 'memory' : sc.query ? 'query' : '';
  }
  function seriesTarget(p, metric, pts) {
    const m = (p.metrics || [])[0];
    if (m && Number.isFinite(m.target)) return m.target;
    const sc = p.scaling || {};
    if (metric === 'cpu') return fin(sc.cpu);
    if (metric === 'memory') return fin(sc.memory);
    if (metric === 'query') return fin(sc.per_replica);
    return pts.length ? fin(pts[pts.length - 1].target) : 0;
  }

  // policyChart draws a scaled service's last hour: replicas (a step
  // line) and desired (dashed) above, its metric and target below.
  function policyChart(p, end, gap) {
    const pts = (Array.isArray(p.series) ? p.series : []).filter((q) => q && Number.isFinite(q.t) && q.t > end - HOUR - 1)
      .sort((a, b) => a.t - b.t);
    const sc = p.scaling || {};
    const metric = seriesMetric(p);
    const target = seriesTarget(p, metric, pts);
    const x = (t) => PL + ((t - (end - HOUR)) / HOUR) * PW;
    const H = 164;
    const root = svg('svg', {
      class: 'chart', 'data-service': p.service, 'data-points': pts.length, viewBox: `0 0 ${CW} ${H}`,
      role: 'img', 'aria-label': `${p.service}: replicas and ${metric || 'metric'} over the last hour`,
    }, svg('title', {}, `${p.service}: replicas (desired dashed) and ${metric || 'metric'} against its target, last hour`));

    // Replicas and desired.
    const rTop = Math.max(fin(sc.max), 1, ...pts.map((q) => Math.max(fin(q.replicas), fin(q.desired))));
    const rs = scale(rTop, 16, 58, 3, true);
    const g1 = svg('g', { class: 'band replicas' });
    band(g1, rs, 'replicas');
    if (sc.min > 0) g1.append(svg('line', { class: 'bound', x1: PL, x2: CW - PR, y1: rs.y(sc.min), y2: rs.y(sc.min) }));
    if (sc.max > 0) g1.append(svg('line', { class: 'bound', x1: PL, x2: CW - PR, y1: rs.y(sc.max), y2: rs.y(sc.max) }));
    for (const run of runs(pts, gap, () => true)) {
      g1.append(svg('polyline', { class: 'l-desired', points: stepPoints(run, x, rs.y, (q) => q.desired) }),
        svg('polyline', { class: 'l-replicas', points: stepPoints(run, x, rs.y, (q) => q.replicas) }));
    }
    if (pts.length) {
      const last = pts[pts.length - 1];
      mark(g1, x(last.t), rs.y(last.replicas), 'd-replicas', String(fin(last.replicas)), 16);
    } else {
      noData(g1, 16 + 33, 'no measurements yet');
    }

    // The metric against its target.
    const valued = pts.filter((q) => !q.missing);
    const mTop = Math.max(target * 1.25, ...valued.map((q) => fin(q.value)), isPct(metric) ? 10 : 1e-9);
    const ms = scale(mTop, 100, 46, 2, false);
    const g2 = svg('g', { class: 'band metric' });
    band(g2, ms, (metric || 'metric') + (isPct(metric) ? ' %' : '') + ' · target ' + metricText(metric, target));
    if (target > 0) g2.append(svg('line', { class: 'l-target', x1: PL, x2: CW - PR, y1: ms.y(target), y2: ms.y(target) }));
    for (const run of runs(pts, gap, (q) => !q.missing)) {
      g2.append(svg('polyline', { class: 'l-metric', points: linePoints(run, x, ms.y, (q) => q.value) }));
    }
    if (valued.length) {
      const last = valued[valued.length - 1];
      mark(g2, x(last.t), ms.y(last.value), 'd-metric', metricText(metric, last.value), 100);
    } else if (pts.length) {
      noData(g2, 100 + 27, 'no replica has reported its use yet');
    }

    const axis = svg('g', { class: 'time' });
    timeAxis(axis, x, end, [[16, 74], [100, 146]]);
    root.append(axis, g1, g2);
    return root;
  }

  // rolesChart draws the workers of each role over the last hour; the
  // dashed line adds the instances still booting.
  function rolesChart(roles, end, gap) {
    const names = Object.keys(roles || {}).sort(byName);
    const series = names.map((r) => (Array.isArray(roles[r]) ? roles[r] : [])
      .filter((q) => q && Number.isFinite(q.t) && q.t > end - HOUR - 1).sort((a, b) => a.t - b.t));
    const total = series.reduce((n, s) => n + s.length, 0);
    const x = (t) => PL + ((t - (end - HOUR)) / HOUR) * PW;
    const H = 132;
    const top = Math.max(1, ...series.flat().map((q) => fin(q.workers) + fin(q.booting)));
    const sc = scale(top, 16, 98, 3, true);
    const root = svg('svg', {
      class: 'chart roles-chart', 'data-chart': 'roles', 'data-points': total, viewBox: `0 0 ${CW} ${H}`,
      role: 'img', 'aria-label': 'workers per role over the last hour',
    }, svg('title', {}, 'workers per role over the last hour (dashed: with the instances still booting)'));
    const axis = svg('g', { class: 'time' });
    timeAxis(axis, x, end, [[16, 114]]);
    const g = svg('g', { class: 'band' });
    band(g, sc, 'workers');
    names.forEach((r, i) => {
      const cls = 'rc' + (i % 6);
      const s = series[i];
      for (const run of runs(s, gap, () => true)) {
        if (run.some((q) => fin(q.booting) > 0)) {
          g.append(svg('polyline', { class: 'l-role booting ' + cls, points: stepPoints(run, x, sc.y, (q) => fin(q.workers) + fin(q.booting)) }));
        }
        g.append(svg('polyline', { class: 'l-role ' + cls, 'data-series': r, points: stepPoints(run, x, sc.y, (q) => fin(q.workers)) }));
      }
      if (s.length) {
        const last = s[s.length - 1];
        mark(g, x(last.t), sc.y(last.workers), cls, String(fin(last.workers)), 16);
      }
    });
    if (!total) noData(g, 16 + 52, 'no measurements yet');
    root.append(axis, g);
    return root;
  }

  function decisionLine(label, d) {
    if (!d) return null;
    const change = d.desired !== d.current;
    const why = [d.metric, d.clamp ? 'bounded by ' + d.clamp : ''].filter(Boolean).join(', ');
    return h('div', { class: 'decision', title: d.reason || undefined },
      h('span', { class: 'muted' }, label + ' '),
      h('time', { datetime: d.at }, clock(d.at)), ' ',
      h('b', {}, change ? `${d.current} → ${d.desired}` : `stay at ${d.current}`),
      why ? ` (${why})` : '',
      change && !d.applied ? h('span', { class: 'pin' }, ' not applied') : '',
      d.reason ? h('span', { class: 'dreason' }, ': ' + d.reason) : '');
  }

  function policyCard(p, end, gap) {
    const sc = p.scaling || {};
    const metrics = (p.metrics || []).map((m) => h('span', { class: 'fig', title: m.error || undefined },
      m.name + ' ', m.missing ? h('b', { class: 'miss' }, 'no data') : h('b', {}, metricText(m.name, m.value)),
      ' / target ' + metricText(m.name, m.target),
      !m.missing && m.reported ? ` · ${m.reported} reporting` : ''));
    if (!metrics.length) {
      const m = seriesMetric(p);
      if (m) metrics.push(h('span', { class: 'fig' }, `${m} target ${metricText(m, seriesTarget(p, m, []))} · not measured yet`));
    }
    return h('article', { class: 'scaled', dataset: { service: p.service || '', off: p.off ? 'true' : 'false' } },
      h('header', {},
        h('span', { class: 'name' }, p.service),
        p.app ? h('span', { class: 'tag' }, 'app ' + p.app) : null,
        p.off ? badge('left', 'autoscale off', 'micado autoscale ' + p.service + ' --on') : badge('running', 'autoscale on'),
        h('span', { class: 'wmeta' }, `${fin(p.replicas)} replica${p.replicas === 1 ? '' : 's'} (${fin(p.ready)} ready) · min ${fin(sc.min)} · max ${fin(sc.max)}`)),
      metrics.length ? h('div', { class: 'figs' }, metrics) : null,
      (p.windows || []).length ? h('div', { class: 'figs muted' }, 'schedule window active: ', (p.windows || []).map((w) => h('code', {}, w))) : null,
      policyChart(p, end, gap),
      decisionLine('last', p.last),
      p.last_change && (!p.last || p.last_change.at !== p.last.at) ? decisionLine('last change', p.last_change) : null);
  }

  function alertList(alerts, lim) {
    lim = lim || {};
    const cpu = fin(lim.CPU ?? lim.cpu);
    const mem = fin(lim.Memory ?? lim.memory);
    const wait = fin(lim.For ?? lim.for) / 1e9;
    const limits = [cpu > 0 ? 'cpu above ' + frac(cpu) : '', mem > 0 ? 'memory above ' + frac(mem) : ''].filter(Boolean);
    const head = h('div', { class: 'alerts-head' }, h('b', {}, 'Node usage alerts'), ' ',
      h('span', { class: 'muted' }, limits.length
        ? `a role with its workers' mean ${limits.join(' or ')}${wait > 0 ? ' for ' + duration(wait) : ''} gets one more instance`
        : 'off (micado up --node-cpu-alert 80%)'));
    const list = (alerts || []).map((a) => {
      const role = a.role ?? a.Role ?? '';
      const metric = a.metric ?? a.Metric ?? '';
      const firing = Boolean(a.firing ?? a.Firing);
      const since = a.since ?? a.Since;
      return h('li', { class: 'alert', dataset: { role: role, metric, firing: String(firing) }, title: a.reason || a.Reason || undefined },
        firing ? badge('critical', 'firing') : badge('warning', 'pending'), ' ',
        h('b', {}, role ? 'role=' + role : 'no role'), ` ${metric} `,
        h('b', {}, frac(a.value ?? a.Value)), ` above ${frac(a.limit ?? a.Limit)}`,
        since ? h('span', { class: 'muted' }, ' since ', h('time', { datetime: since }, clock(since))) : '');
    });
    if (limits.length && !list.length) list.push(h('li', { class: 'empty' }, 'no role is above its limit'));
    return [head, list.length ? h('ul', { class: 'alerts' }, list) : null];
  }

  function drawAutoscale(v) {
    const root = $('autoscale');
    if (v instanceof Error) {
      $('autoscale-meta').textContent = '';
      root.replaceChildren(h('div', { class: 'empty' }, 'Autoscaling status unavailable: ' + v.message));
      return;
    }
    v = v || {};
    const pols = (Array.isArray(v.policies) ? v.policies : []).slice().sort((a, b) => byName(a.service, b.service));
    const roles = v.roles && typeof v.roles === 'object' ? v.roles : {};
    const interval = seconds(v.interval);
    const gap = Math.max(3 * interval, 15);
    // Every chart ends at the newest point (the manager's clock), so that
    // a browser whose clock is off still lines them up.
    let end = 0;
    for (const p of pols) for (const q of p.series || []) end = Math.max(end, fin(q.t));
    for (const r of Object.values(roles)) for (const q of r || []) end = Math.max(end, fin(q.t));
    if (!end) end = Math.floor(Date.now() / 1000);
    $('autoscale-meta').textContent = interval ? `every ${v.interval} · last hour` : '';
    const cards = pols.map((p) => policyCard(p, end, gap));
    cards.push(h('article', { class: 'scaled roles-card' },
      h('header', {}, h('span', { class: 'name' }, 'workers per role'),
        h('span', { class: 'legend' }, Object.keys(roles).sort(byName).map((r, i) => h('span', {}, h('i', { class: 'ln rc' + (i % 6) }), r)),
          h('span', {}, h('i', { class: 'ln ln-dash' }), 'with booting'))),
      rolesChart(roles, end, gap)));
    root.replaceChildren(...[
      pols.length ? null : h('div', { class: 'empty hint' }, 'No service has a scaling policy: ',
        h('code', {}, 'micado launch … --min 2 --max 10 --cpu 60%'), ' (or scaling: in a definition file).'),
      h('div', { class: 'scaled-grid' }, cards),
      h('div', { class: 'alerts-box' }, alertList(v.alerts, v.limit)),
    ].filter(Boolean));
  }

  // --- polling -------------------------------------------------------------

  function setConn(state, text) {
    $('conn').dataset.state = state;
    $('conn-text').textContent = text;
  }

  function showNotice(kind, ...content) {
    const n = $('notice');
    n.className = 'notice ' + kind;
    n.replaceChildren(...content);
    n.hidden = false;
  }

  function needToken(rejected) {
    storeSet(null);
    token = null;
    $('main').hidden = true;
    setConn('off', rejected ? 'token rejected' : 'no token');
    showNotice('auth',
      h('h2', {}, rejected ? 'The manager refused this token' : 'This dashboard needs the cluster\u2019s API token'),
      h('p', {}, 'Get a link that carries it by running, where you ran ', h('code', {}, 'micado up'), ':'),
      h('pre', {}, 'micado dashboard'),
      h('p', {}, 'and open the URL it prints (', h('code', {}, '…/ui/#token=…'), '). For another cluster add ',
        h('code', {}, '--cluster NAME'), ', or set ', h('code', {}, 'MICADO_ADDR'), ' and ', h('code', {}, 'MICADO_TOKEN'), '.'),
      h('p', { class: 'muted' }, 'The token travels after the #, which your browser never sends to the server; this tab keeps it in session storage and removes it from the address bar.'));
  }

  async function tick() {
    timer = null;
    try {
      const evPath = lastSeq ? `/v1/events?since=${lastSeq}&limit=${MAX_EVENTS}` : `/v1/events?limit=${MAX_EVENTS}`;
      // The autoscaling view comes from the leader only: while it cannot
      // be had (a failover, an older manager), the rest still shows.
      const fetchAuto = Date.now() - lastAutoAt >= AUTO_MS;
      const [st, all, cs, evs, auto] = await Promise.all([api('/v1/status'), api('/v1/nodes'), api('/v1/containers'), api(evPath),
        fetchAuto ? api('/v1/autoscale?history=1').catch((e) => e) : Promise.resolve(undefined)]);
      if (fetchAuto) lastAutoAt = Date.now();
      if (auto instanceof APIError && auto.status === 401) throw auto;
      const nodes = (all || []).filter((n) => n.kind !== 'manager');
      let newEvents = false;
      for (const e of evs || []) {
        if (e.seq > lastSeq) {
          events.push(e);
          lastSeq = e.seq;
          newEvents = true;
        }
      }
      if (events.length > MAX_EVENTS) events = events.slice(-MAX_EVENTS);
      const drawn = JSON.stringify([st, nodes, cs]);
      if (drawn !== lastDrawn) {
        lastDrawn = drawn;
        drawSummary(st, nodes || [], cs || []);
        drawWorkers(nodes || [], cs || []);
        drawPending(cs || []);
      }
      if (newEvents || !$('events').childElementCount) drawEvents();
      const autoDrawn = auto instanceof Error ? 'error: ' + auto.message : JSON.stringify(auto);
      if (auto !== undefined && autoDrawn !== lastAuto) {
        lastAuto = autoDrawn;
        try {
          drawAutoscale(auto);
        } catch (e) {
          $('autoscale').replaceChildren(h('div', { class: 'empty' }, 'Cannot draw the autoscaling view: ' + e.message));
        }
      }
      $('notice').hidden = true;
      $('main').hidden = false;
      setConn('ok', 'live · ' + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (e) {
      if (e.status === 401) {
        needToken(Boolean(token));
        return; // polling resumes when a token arrives (hashchange)
      }
      setConn('err', e.message);
      if ($('main').hidden) showNotice('err', h('p', {}, 'Cannot load the cluster: ' + e.message));
    }
    schedule(POLL_MS);
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  function start() {
    token = takeToken();
    lastDrawn = '';
    lastAuto = '';
    schedule(0);
  }

  window.addEventListener('hashchange', start);
  start();
})();
