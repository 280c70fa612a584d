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
  const MAX_EVENTS = 60;

  const $ = (id) => document.getElementById(id);
  let memToken = null; // when sessionStorage is unavailable
  let token = null;
  let lastSeq = 0;
  let events = [];
  let lastDrawn = '';
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

  // bytes formats like the CLI: 1 GiB, 857.6 MiB, 12 KiB, 512 B.
  function bytes(n) {
    n = Number(n) || 0;
    const neg = n < 0 ? '-' : '';
    n = Math.abs(n);
    const trim = (v, p) => v.toFixed(p).replace(/\.?0+$/, '');
    if (n >= 2 ** 30) return neg + trim(n / 2 ** 30, 2) + ' GiB';
    if (n >= 2 ** 20) return neg + trim(n / 2 ** 20, 1) + ' MiB';
    if (n >= 2 ** 10) return neg + trim(n / 2 ** 10, 1) + ' KiB';
    return neg + n + ' B';
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
      const [st, all, cs, evs] = await Promise.all([api('/v1/status'), api('/v1/nodes'), api('/v1/containers'), api(evPath)]);
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
    schedule(0);
  }

  window.addEventListener('hashchange', start);
  start();
})();
