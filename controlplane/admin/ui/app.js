// Tether monitor: renders the control plane's /api/state document, received live over
// server-sent events (api/events). No libraries, no network beyond the admin server.
"use strict";

const HISTORY_MS = 10 * 60 * 1000; // charts keep the last 10 minutes
const MAX_POINTS = 1200;
const history = new Map(); // "service/id" -> [{t, s, c}]
let clockOffset = 0; // server clock minus browser clock, in ms
let lastStates = new Map(); // "service/id" -> state, to flash rows that change

function serverNow() { return Date.now() + clockOffset; }

// h builds an element: h("td", {class: "x", text: "y"}, child...). Text is always set as
// text, never parsed as HTML: registry values come from agents.
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = v;
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) el.append(k);
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function num(v) { return (Math.round(v * 10) / 10).toString(); }

function ago(iso) {
  if (!iso || iso.startsWith("0001-")) return "–";
  const s = Math.max(0, Math.floor((serverNow() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s ago";
  if (s < 172800) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m ago";
  return Math.floor(s / 86400) + "d ago";
}

function timeCell(iso, cls) {
  return h("span", { class: cls || "", "data-ts": iso, title: iso, text: ago(iso) });
}

// meter shows value against its threshold (0 = unlimited) as numbers and a bar that turns
// amber at 80% of the threshold and red at the threshold.
function meter(value, limit, unit, extra) {
  const frac = limit > 0 ? value / limit : (unit === "%" ? value / 100 : 0);
  const cls = limit <= 0 ? "free" : frac >= 1 ? "over" : frac >= 0.8 ? "warn" : "";
  const fill = h("i");
  fill.style.width = Math.min(100, Math.max(0, frac * 100)).toFixed(1) + "%";
  return h("div", { class: "meter" },
    h("div", { class: "vals" },
      h("span", { text: num(value) + unit }),
      h("span", { class: "lim", text: limit > 0 ? "/ " + num(limit) + unit : "no limit" })),
    h("div", { class: "bar " + cls }, fill),
    extra ? h("div", { class: "extra", text: extra }) : null);
}

function memoryExtra(load, thr) {
  if (thr.maxMemoryMB > 0) return num(load.memoryMB) + " / " + num(thr.maxMemoryMB) + " MiB";
  if (load.memoryMB > 0) return num(load.memoryMB) + " MiB";
  return "";
}

// spark draws one series of the instance's history as a polyline over the last 10 minutes
// (or since the first sample, when the page is younger), with the threshold as a dashed
// line when there is one.
function spark(points, key, limit, cls, label) {
  const W = 96, H = 26, now = serverNow();
  const t0 = points.length ? Math.max(now - HISTORY_MS, points[0].t) : now - HISTORY_MS;
  const span = Math.max(now - t0, 1000);
  let top = limit > 0 ? limit : 0;
  for (const p of points) top = Math.max(top, p[key]);
  if (key === "c" && limit <= 0) top = 100;
  top = top > 0 ? top * 1.08 : 1;
  const y = (v) => (H - 2 - (v / top) * (H - 4)).toFixed(1);
  const x = (t) => (((Math.max(t, t0) - t0) / span) * W).toFixed(1);
  const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
  if (limit > 0) el.append(svg("line", { class: "thr", x1: 0, x2: W, y1: y(limit), y2: y(limit) }));
  if (points.length) {
    // A step line: each value holds until the next sample.
    const pts = [];
    points.forEach((p, i) => {
      if (i > 0) pts.push(x(p.t) + "," + y(points[i - 1][key]));
      pts.push(x(p.t) + "," + y(p[key]));
    });
    pts.push(W + "," + y(points[points.length - 1][key]));
    el.append(svg("polyline", { class: cls, points: pts.join(" ") }));
  }
  const last = points.length ? points[points.length - 1][key] : 0;
  return h("figure", { title: label + ", last 10 minutes" }, el, h("figcaption", { text: label + " " + num(last) }));
}

function record(state) {
  const t = Date.parse(state.generatedAt) || serverNow();
  const seen = new Set();
  for (const svc of state.services) {
    for (const inst of svc.instances) {
      const k = svc.name + "/" + inst.id;
      seen.add(k);
      let pts = history.get(k);
      if (!pts) { pts = []; history.set(k, pts); }
      const last = pts[pts.length - 1];
      const p = { t, s: inst.load.sessions, c: inst.load.cpu };
      if (last && last.t >= t) continue;
      pts.push(p);
      while (pts.length > MAX_POINTS || (pts.length > 1 && pts[1].t < t - HISTORY_MS)) pts.shift();
    }
  }
  for (const k of history.keys()) if (!seen.has(k)) history.delete(k);
}

function summaryTiles(state) {
  const s = state.summary;
  let envoys = 0, inSync = 0;
  for (const g of state.groups) for (const e of g.envoys) { envoys++; if (e.inSync) inSync++; }
  const tile = (cls, n, label, hot) => h("div", { class: "tile " + cls + (hot ? " hot" : "") },
    h("div", { class: "n", text: String(n) }), h("div", { class: "l", text: label }));
  return [
    tile("", s.services, "services"),
    tile("", s.instances, "instances"),
    tile("t-available", s.available, "available"),
    tile("t-full", s.full, "full", s.full > 0),
    tile("t-draining", s.draining, "draining", s.draining > 0),
    tile("t-unhealthy", s.unhealthy, "unhealthy", s.unhealthy > 0),
    tile("t-draining", s.drained || 0, "drained by operator"),
    tile("", s.sessions, "sessions"),
    tile("", envoys ? inSync + "/" + envoys : "none", "envoys in sync"),
  ];
}

// unknown lists a drain's instances whose agents did not measure their sessions: while there
// is one, the count is not what is left and nothing is safe to stop.
const unknown = (d) => d.sessionsUnknown || [];

// drainsCard lists the operators' drains: what each selects, since when, the instances it
// drains now and the sessions they still hold (when it reaches 0 they can be stopped).
function drainsCard(state) {
  const drains = state.drains || [];
  if (!drains.length) return [];
  const rows = drains.map((d) => h("tr", { "data-drain": d.service + "/" + d.name },
    h("td", { class: "id", text: d.service }),
    h("td", null, h("span", { class: "id", text: d.name }),
      h("span", { class: "addr", text: d.instance ? "instance " + d.instance :
        "labels " + Object.keys(d.labels || {}).sort().map((k) => k + "=" + d.labels[k]).join(",") })),
    h("td", null, d.createdAt ? timeCell(d.createdAt) : h("span", { class: "muted", text: "–" })),
    h("td", { text: d.matched.length ? d.matched.join(", ") : "none" }),
    h("td", null, h("b", { class: d.sessions || unknown(d).length ? "" : "sync-ok", text: String(d.sessions) }),
      unknown(d).length ? h("span", { class: "addr", text: "unknown on " + unknown(d).join(", ") }) :
        d.matched.length && !d.sessions ? h("span", { class: "addr", text: "safe to stop" }) : null),
    h("td", { text: d.reason || "–" })));
  const cols = ["Service", "Drain", "Since", "Drained instances", "Sessions left", "Reason"];
  return [h("div", { class: "card drains" },
    h("div", { class: "card-head" }, h("h2", { text: "Drains" }),
      h("span", { class: "sub", text: "set by operators (tether-controlplane drain): no new sessions, existing ones stay" })),
    h("div", { class: "scroll" }, h("table", null,
      h("thead", null, h("tr", null, ...cols.map((c) => h("th", { text: c })))),
      h("tbody", null, ...rows))))];
}

function alerts(state) {
  const out = [];
  if (state.rejected.length) {
    out.push(h("div", { class: "alert" },
      h("h3", { text: state.rejected.length + " registry key(s) rejected and left out" }),
      h("ul", null, ...state.rejected.map((r) => h("li", null, h("code", { text: r.key }), " — " + r.error.split("\n").join("; "))))));
  }
  if (state.problems.length) {
    out.push(h("div", { class: "alert" },
      h("h3", { text: state.problems.length + " translation problem(s)" }),
      h("ul", null, ...state.problems.map((p) => h("li", null, h("code", { text: p.service }), " — " + p.message)))));
  }
  return out;
}

function instanceRow(svc, inst) {
  const key = svc.name + "/" + inst.id;
  const pts = history.get(key) || [];
  const thr = inst.thresholds, load = inst.load;
  const changed = lastStates.has(key) && lastStates.get(key) !== inst.state;
  const addr = inst.address.includes(":") ? `[${inst.address}]:${inst.port}` : `${inst.address}:${inst.port}`;
  const envoy = inst.envoy
    ? h("td", null, h("span", { class: "weight", title: "load_balancing_weight", text: String(inst.envoy.weight) }),
        h("span", { class: "h h-" + inst.envoy.health, text: inst.envoy.health.toLowerCase() }),
        inst.envoy.firstPhase ? h("span", { class: "phase", "data-phase": "first",
          title: "new: served as DRAINING until every Envoy knows it", text: "first phase" }) : null,
        h("span", { class: "known", title: "Envoys that know this endpoint",
          text: inst.envoy.knownBy + "/" + inst.envoy.envoys + " Envoys" }))
    : h("td", { class: "muted", title: "not in the configuration served to Envoy", text: "not served" });
  return h("tr", { class: "inst st-" + inst.state + (changed ? " flash" : ""), "data-instance": key, "data-state": inst.state },
    h("td", null, h("span", { class: "badge b-" + inst.state, text: inst.state }),
      inst.drain ? h("span", { class: "drained", "data-drain": inst.drain.name,
        title: "drained by the operator's drain " + inst.drain.name + (inst.drain.since ? " since " + inst.drain.since : ""),
        text: "⏏ drain " + inst.drain.name }) : null,
      inst.drain && inst.drain.since && !inst.drain.since.startsWith("0001-") ? timeCell(inst.drain.since, "drained-since") : null,
      inst.reason ? h("span", { class: "reason", text: inst.reason }) : null),
    h("td", null, h("span", { class: "id", text: inst.id }), h("span", { class: "addr", text: addr })),
    h("td", null, meter(load.sessions, thr.maxSessions, "",
      load.sessionsUnknown ? "not measured: no --sessions-url, or its probe fails" : null)),
    h("td", null, meter(load.cpu, thr.maxCPU, "%", null)),
    h("td", null, meter(load.memory, thr.maxMemory, "%", memoryExtra(load, thr))),
    h("td", null, h("div", { class: "spark" },
      spark(pts, "s", thr.maxSessions, "l-s", "sessions"), spark(pts, "c", thr.maxCPU, "l-c", "cpu"))),
    envoy,
    h("td", { text: inst.zone || "–" }),
    agentCell(inst.agent),
    h("td", null, timeCell(inst.updatedAt)));
}

// agentCell shows the agent's version, linked to its /metrics when it published the address
// (agent.metrics is validated as ip:port by the registry).
function agentCell(agent) {
  const version = agent && agent.version ? agent.version : "–";
  if (!agent || !agent.metrics) return h("td", { class: "mono", text: version });
  return h("td", { class: "mono" },
    h("a", { href: "http://" + agent.metrics + "/metrics", title: "the agent's /metrics at " + agent.metrics, text: version }));
}

function serviceCard(svc) {
  const avail = svc.instances.filter((i) => i.state === "available").length;
  let sess = 0, cap = 0, capped = true;
  for (const i of svc.instances) {
    sess += i.load.sessions;
    if (i.thresholds.maxSessions > 0) cap += i.thresholds.maxSessions; else capped = false;
  }
  const head = h("div", { class: "card-head" },
    h("h2", { text: svc.name }),
    h("span", { class: "sub", text: svc.domains.join(", ") + " " + svc.pathPrefix + " · affinity " + svc.affinity +
      (svc.configured ? "" : " · default config") }),
    h("div", { class: "cap" },
      h("span", null, h("b", { text: avail + "/" + svc.instances.length }), " available"),
      h("span", null, h("b", { text: String(sess) }), capped && cap > 0 ? " / " + cap + " sessions" : " sessions")));
  if (!svc.instances.length) {
    return h("div", { class: "card", "data-service": svc.name }, head, h("p", { class: "empty", text: "No instance registered." }));
  }
  const cols = ["State", "Instance", "Sessions", "CPU", "Memory", "Last 10 min", "Envoy weight", "Zone", "Agent", "Updated"];
  return h("div", { class: "card", "data-service": svc.name }, head,
    h("div", { class: "scroll" }, h("table", null,
      h("thead", null, h("tr", null, ...cols.map((c) => h("th", { text: c })))),
      h("tbody", null, ...svc.instances.map((i) => instanceRow(svc, i))))));
}

function envoyCard(state) {
  const rows = [];
  for (const g of state.groups) {
    if (!g.envoys.length) {
      rows.push(h("tr", null, h("td", { class: "group-name", text: g.name || "–" }),
        h("td", { class: "muted", colspan: "5", text: "no Envoy connected" })));
      continue;
    }
    for (const e of g.envoys) {
      const acked = Object.keys(e.acked).sort().map((t) => t.replace("ClusterLoadAssignment", "Endpoints")
        .replace("RouteConfiguration", "Routes") + " " + e.acked[t].slice(0, 8)).join(" · ");
      rows.push(h("tr", { "data-envoy": e.nodeId },
        h("td", { class: "group-name", text: g.name || "–" }),
        h("td", null, h("span", { class: "id", text: e.nodeId || "(handshake)" }),
          h("span", { class: "addr", text: e.variant + " stream " + e.streamId }),
          h("span", e.belowMinVersion ? { class: "nack", "data-old-envoy": "1", title: (e.missing || []).join("; "),
            text: "Envoy " + e.envoyVersion + ", below " + state.minEnvoyVersion + ": " + (e.missing || []).join("; ") }
            : { class: "addr", text: e.envoyVersion ? "Envoy " + e.envoyVersion : "Envoy version not reported" })),
        h("td", null, timeCell(e.connectedAt)),
        h("td", null, h("span", { class: e.inSync ? "sync-ok" : "sync-no", text: e.inSync ? "✓ in sync" : "behind" }),
          e.laggingSince ? h("span", { class: "nack", "data-lagging": "1",
            title: "held the promotion of " + e.laggingEndpoint + " past --publish-settle",
            text: "lagging since " + e.laggingSince }) : null,
          h("span", { class: "addr", text: acked || "nothing ACKed yet" })),
        h("td", null, h("span", { class: e.nacks ? "nack" : "muted", text: String(e.nacks) }),
          e.lastNack ? h("span", { class: "nack-msg", text: e.lastNack }) : null)));
    }
  }
  const cols = ["Group", "Envoy", "Connected", "Config ACKed", "NACKs"];
  return h("div", { class: "card" },
    h("div", { class: "card-head" }, h("h2", { text: "Envoys" }),
      h("span", { class: "sub", text: "served versions: " + Object.keys(state.versions).sort()
        .map((t) => state.versions[t].slice(0, 8)).join(" · ") })),
    h("div", { class: "scroll" }, h("table", null,
      h("thead", null, h("tr", null, ...cols.map((c) => h("th", { text: c })))),
      h("tbody", null, ...rows))));
}

function render(state) {
  const meta = document.getElementById("meta");
  meta.replaceChildren(
    h("span", null, "revision ", h("b", { text: String(state.revision) })),
    h("span", null, "published ", state.ready ? timeCell(state.publishedAt) : h("b", { text: "not yet" })));
  document.getElementById("summary").replaceChildren(...summaryTiles(state));
  document.getElementById("alerts").replaceChildren(...alerts(state));
  document.getElementById("drains").replaceChildren(...drainsCard(state));
  const services = document.getElementById("services");
  if (!state.ready) {
    services.replaceChildren(h("p", { class: "empty", text: "The control plane has not read the registry from etcd yet." }));
  } else if (!state.services.length && state.rejected.length) {
    services.replaceChildren(h("p", { class: "empty", text: "No service is served: every key registered was rejected (see above why)." }));
  } else if (!state.services.length) {
    services.replaceChildren(h("p", { class: "empty", text: "No service registered yet: start an agent (tether-agent --service app --port 5000)." }));
  } else {
    services.replaceChildren(...state.services.map(serviceCard));
  }
  document.getElementById("envoys").replaceChildren(envoyCard(state));
  lastStates = new Map();
  for (const svc of state.services) for (const i of svc.instances) lastStates.set(svc.name + "/" + i.id, i.state);
  const bad = state.summary.full + state.summary.draining + state.summary.unhealthy;
  document.title = (bad ? "(" + bad + " not available) " : "") + "Tether monitor";
}

function onState(ev) {
  let state;
  try { state = JSON.parse(ev.data); } catch (e) { return; }
  const gen = Date.parse(state.generatedAt);
  if (!Number.isNaN(gen)) clockOffset = gen - Date.now();
  record(state);
  render(state);
}

function setConn(cls, text) {
  const el = document.getElementById("conn");
  el.className = "conn " + cls;
  document.getElementById("conn-text").textContent = text;
}

function connect() {
  const es = new EventSource("api/events");
  es.addEventListener("state", onState);
  es.onopen = () => setConn("conn-live", "live");
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // The server refused the stream (e.g. too many viewers): try again later.
      setConn("conn-down", "disconnected · retrying");
      setTimeout(connect, 10000 + Math.random() * 5000);
    } else {
      setConn("conn-wait", "reconnecting…");
    }
  };
}

// Ages move with time between events.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-ts]")) el.textContent = ago(el.getAttribute("data-ts"));
}, 1000);

connect();
