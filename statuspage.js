// The hostbreaker status page (statuspage.go serves it as status.js).
// Every value from the server (host names, roles, notes, reasons: a host
// name is chosen by whoever controls a URL) is written with textContent,
// never as markup.
"use strict";
(function () {
  const body = document.body;
  const control = body.dataset.control === "on";
  const windowMs = (Number(body.dataset.window) || 10) * 1000; // for the per-second rates
  const refreshMs = 2000; // the snapshot is read again this often, and after events
  const heldMs = 3000; // an event's state wins over a snapshot this long
  const maxRowEvents = 3, maxEvents = 100;

  const $ = (id) => document.getElementById(id);
  const rowsEl = $("rows"), eventsEl = $("events"), filterEl = $("filter");
  const rows = new Map(); // key -> row
  const seen = new Set(); // event keys, so that none is shown twice
  let skew = 0; // server clock - client clock, ms
  let refreshTimer = 0;

  if (control) {
    $("control").hidden = false;
    $("actions-head").hidden = false;
  }

  const rowKey = (host, role, source) => host + "\u0000" + role + "\u0000" + source;
  const now = () => Date.now() + skew;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // newRow makes the row of a (host, role, source), with its cells.
  function newRow(d) {
    const tr = el("tr");
    const cells = {};
    for (const [name, cls] of [["host", "host"], ["role", "role"], ["state", "state"], ["reason", "reason"],
      ["left", "num"], ["rate", "num"], ["req", "num"], ["fail", "num"], ["rej", "num"],
      ["source", ""], ["events", "events"]]) {
      cells[name] = el("td", cls);
      tr.appendChild(cells[name]);
    }
    cells.stateLabel = el("span");
    cells.state.appendChild(cells.stateLabel);
    cells.reasonText = el("span");
    cells.note = el("div", "note");
    cells.reason.append(cells.reasonText, cells.note);
    const r = { key: rowKey(d.host, d.role, d.source), d: d, tr: tr, cells: cells, samples: [], events: [],
      heldUntil: 0, rates: { req: null, fail: null, rej: null } };
    if (control) {
      const td = el("td");
      for (const action of ["open", "close"]) {
        const b = el("button", "", action);
        b.type = "button";
        b.addEventListener("click", () => act(action, r.d.host));
        td.appendChild(b);
      }
      tr.appendChild(td);
    }
    rows.set(r.key, r);
    return r;
  }

  function fmtRate(v) {
    if (!v) return "-";
    return (v >= 10 ? v.toFixed(1) : v.toFixed(2)) + "/s";
  }
  function fmtPerSec(v) {
    if (v === null) return "…";
    return v === 0 ? "0" : v >= 10 ? v.toFixed(0) : v.toFixed(1);
  }
  function fmtLeft(until) {
    if (!until) return "-";
    let s = Math.max(0, Math.ceil((Date.parse(until) - now()) / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return m + "m" + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  function fmtTime(t) {
    const d = new Date(t);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour12: false });
  }

  // describe is an event in words, with its reason.
  function describe(ev) {
    const parts = [];
    switch (ev.name) {
      case "hostbreaker.state_change":
        parts.push((ev.previous_state || "closed") + " → " + (ev.state || "closed"));
        if (ev.reason) parts.push(ev.reason);
        if (ev.failures) parts.push("after " + ev.failures + " failures");
        if (ev.status_code) parts.push("last " + ev.status_code);
        if (ev.error_type) parts.push("last " + ev.error_type);
        if (ev.remote) parts.push("(from the store)");
        break;
      case "hostbreaker.cooldown":
        parts.push("cooldown: " + (ev.reason || "?"));
        if (ev.status_code) parts.push("after " + ev.status_code);
        if (ev.retry_after) parts.push("Retry-After " + Math.round(ev.retry_after / 1e9) + "s");
        if (ev.until) parts.push("until " + fmtTime(ev.until));
        if (ev.note) parts.push("“" + ev.note + "”");
        break;
      case "hostbreaker.reset":
        parts.push("reset");
        break;
      case "hostbreaker.rate_change":
        parts.push("rate " + fmtRate(ev.previous_rate) + " → " + fmtRate(ev.rate));
        if (ev.note) parts.push(ev.note);
        if (ev.status_code) parts.push("(" + ev.status_code + ")");
        break;
      case "hostbreaker.policy_change":
        parts.push("policy: " + (ev.policy || ""));
        if (ev.note) parts.push("(" + ev.note + ")");
        break;
      default:
        parts.push(ev.name);
    }
    return parts.join(" ");
  }

  // rank puts hosts in trouble first.
  function rank(d, r) {
    if (d.state === "open") return 0;
    if (d.state === "half-open") return 1;
    if (r.rates.fail || r.rates.rej || (d.rate && d.rate !== d.configured_rate)) return 2;
    return 3;
  }

  function render(r) {
    const d = r.d, c = r.cells;
    c.host.textContent = d.host;
    c.role.textContent = d.role === "" ? "-" : d.role;
    c.state.className = "state state-" + d.state;
    c.stateLabel.textContent = d.state;
    c.reasonText.textContent = d.reason || "";
    c.note.textContent = d.note || "";
    c.left.textContent = fmtLeft(d.until);
    c.rate.textContent = fmtRate(d.rate) + " / " + fmtRate(d.configured_rate);
    c.req.textContent = fmtPerSec(r.rates.req);
    c.fail.textContent = fmtPerSec(r.rates.fail);
    c.rej.textContent = fmtPerSec(r.rates.rej);
    c.source.textContent = d.source || "";
    c.events.replaceChildren(...r.events.map((ev) => el("div", "", fmtTime(ev.time) + " " + describe(ev))));
    r.tr.classList.toggle("trouble", rank(d, r) < 3);
    r.tr.dataset.state = d.state;
  }

  function matches(r, q) {
    if (!q) return true;
    const d = r.d;
    return [d.host, d.role, d.state, d.reason, d.source, d.note].some((v) => (v || "").toLowerCase().includes(q));
  }

  // layout sorts the rows (trouble first, then by host, role, source) and
  // applies the filter.
  function layout() {
    const q = filterEl.value.trim().toLowerCase();
    const list = [...rows.values()].sort((a, b) =>
      rank(a.d, a) - rank(b.d, b) || (a.d.host < b.d.host ? -1 : a.d.host > b.d.host ? 1 : 0) ||
      (a.d.role < b.d.role ? -1 : a.d.role > b.d.role ? 1 : 0) || (a.d.source < b.d.source ? -1 : a.d.source > b.d.source ? 1 : 0));
    let shown = 0, open = 0;
    for (const r of list) {
      r.tr.hidden = !matches(r, q);
      if (!r.tr.hidden) shown++;
      if (r.d.state !== "closed") open++;
      rowsEl.appendChild(r.tr);
    }
    $("empty").hidden = rows.size > 0;
    $("summary").textContent = rows.size + " rows, " + open + " not closed" + (q ? ", " + shown + " shown" : "");
  }

  // applySnapshot replaces the rows with the snapshot's, and computes the
  // per-second rates over the last window.
  function applySnapshot(list, at) {
    const keep = new Set();
    for (const d of list) {
      const k = rowKey(d.host, d.role, d.source);
      keep.add(k);
      let r = rows.get(k);
      if (!r) {
        r = newRow(d);
      } else if (at < r.heldUntil) {
        // An event changed this row a moment ago; the snapshot may predate it.
        d.state = r.d.state; d.reason = r.d.reason; d.until = r.d.until; d.note = r.d.note;
      }
      if (at >= r.heldUntil) r.tr.dataset.via = "snapshot";
      r.d = d;
      r.samples.push({ t: at, req: d.requests, fail: d.failures, rej: d.rejected });
      while (r.samples.length > 2 && at - r.samples[1].t >= windowMs) r.samples.shift();
      const first = r.samples[0], dt = (at - first.t) / 1000;
      if (dt > 0) {
        const rate = (a, b) => Math.max(0, (a - b) / dt);
        r.rates = { req: rate(d.requests, first.req), fail: rate(d.failures, first.fail), rej: rate(d.rejected, first.rej) };
      }
      render(r);
    }
    for (const [k, r] of rows) {
      if (!keep.has(k) && at >= r.heldUntil) {
        r.tr.remove();
        rows.delete(k);
      }
    }
    layout();
  }

  async function refresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, refreshMs);
    try {
      const resp = await fetch("status.json", { cache: "no-store" });
      if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
      const date = Date.parse(resp.headers.get("Date") || "");
      if (!isNaN(date) && Math.abs(date - Date.now()) > 1500) skew = date - Date.now();
      applySnapshot(await resp.json(), Date.now());
    } catch (e) {
      setConn("down", "snapshot failed: " + e.message);
    }
  }
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 500);
  }

  function setConn(cls, text) {
    const c = $("conn");
    c.className = "conn " + cls;
    c.textContent = text;
  }

  function eventKey(ev) {
    return [ev.time, ev.process, ev.name, ev.host, ev.role || ""].join("\u0000");
  }

  // listEvent adds ev to the recent events and to its host's rows.
  function listEvent(ev) {
    const li = el("li");
    li.append(el("span", "t", fmtTime(ev.time) + " "), el("b", "", ev.host), document.createTextNode(
      (ev.role ? " [" + ev.role + "]" : "") + " " + describe(ev)));
    eventsEl.prepend(li);
    while (eventsEl.children.length > maxEvents) eventsEl.lastChild.remove();
    for (const r of rows.values()) {
      if (r.d.host === ev.host && (!ev.role || r.d.role === ev.role)) {
        r.events.unshift(ev);
        r.events.length = Math.min(r.events.length, maxRowEvents);
        render(r);
      }
    }
  }

  // applyEvent changes the rows an event is about, at once; the next
  // snapshot confirms it.
  function applyEvent(ev) {
    const at = Date.now();
    const touch = (r) => { r.heldUntil = at + heldMs; r.tr.dataset.via = "event"; };
    const hostRows = [...rows.values()].filter((r) => r.d.host === ev.host && r.d.source === ev.process);
    switch (ev.name) {
      case "hostbreaker.state_change": {
        const role = ev.role || "";
        let r = rows.get(rowKey(ev.host, role, ev.process));
        if (!r) r = newRow({ host: ev.host, role: role, source: ev.process, state: "closed", reason: "",
          requests: 0, successes: 0, failures: 0, neutral: 0, rejected: 0 });
        r.d.state = ev.state || "closed";
        r.d.reason = ev.state === "open" ? ev.reason || "" : "";
        r.d.until = ev.state === "open" ? ev.until : "";
        touch(r);
        render(r);
        break;
      }
      case "hostbreaker.cooldown":
        for (const r of hostRows) {
          r.d.state = "open"; r.d.reason = ev.reason || ""; r.d.until = ev.until; r.d.note = ev.note || "";
          touch(r);
          render(r);
        }
        break;
      case "hostbreaker.reset":
        for (const r of hostRows) {
          r.d.state = "closed"; r.d.reason = ""; r.d.until = ""; r.d.note = "";
          touch(r);
          render(r);
        }
        break;
      case "hostbreaker.rate_change":
        for (const r of hostRows) {
          r.d.rate = ev.rate || 0;
          render(r);
        }
        break;
    }
    layout();
  }

  function onEvent(live) {
    return (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      const k = eventKey(ev);
      if (seen.has(k)) return;
      seen.add(k);
      if (seen.size > 5000) seen.clear();
      if (live) applyEvent(ev);
      listEvent(ev);
      if (live) refreshSoon();
    };
  }

  function connect() {
    const es = new EventSource("events");
    es.addEventListener("open", () => { setConn("live", "live"); refresh(); });
    es.addEventListener("error", () => setConn("down", "reconnecting…"));
    es.addEventListener("backlog", onEvent(false));
    es.addEventListener("change", onEvent(true));
    es.addEventListener("resync", () => refresh());
  }

  async function act(action, host) {
    const result = $("result");
    const token = $("token").value;
    if (!token) {
      result.textContent = "enter the token first";
      return;
    }
    try {
      const resp = await fetch(action, {
        method: "POST",
        headers: { "X-Hostbreaker-Token": token },
        body: new URLSearchParams({ host: host }),
      });
      const text = (await resp.text()).trim();
      result.textContent = resp.ok ? action + " " + host + ": done" : action + " " + host + ": " + text;
    } catch (e) {
      result.textContent = action + " " + host + ": " + e.message;
    }
    refresh();
  }

  filterEl.addEventListener("input", layout);
  setInterval(() => {
    for (const r of rows.values()) if (r.d.until) r.cells.left.textContent = fmtLeft(r.d.until);
  }, 250);
  refresh();
  connect();
})();
