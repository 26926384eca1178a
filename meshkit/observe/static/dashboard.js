// meshkit dashboard: renders each document /events pushes. Hand-written, no dependencies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const STALE_AFTER_MS = 5000;
let lastMessage = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(id, ...children) {
  document.getElementById(id).replaceChildren(...children.flat());
}

const fmt = {
  rps: (v) => (v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 2 : 1)),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 1 ? 2 : 0) + "%"),
  ms: (v) => (v === null || v === undefined ? "–" : (v * 1000).toFixed(1)),
};

function setStatus(state, text) {
  const status = document.getElementById("status");
  if (status.dataset.state !== state || status.textContent !== text) {
    status.dataset.state = state;
    status.textContent = text;
  }
}

// -- topology --------------------------------------------------------------------------

function layout(nodes, links) {
  // Columns by call depth: a node sits one column right of its deepest caller.
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < nodes.length; pass++) {
    let changed = false;
    for (const [from, to] of links) {
      if (from === to) continue;
      const wanted = depth.get(from) + 1;
      if (wanted > depth.get(to) && wanted < nodes.length) {
        depth.set(to, wanted);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const node of nodes) {
    const d = depth.get(node.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(node.id);
  }
  const count = Math.max(...columns.keys(), 0) + 1;
  const tallest = Math.max(...[...columns.values()].map((c) => c.length), 1);
  const width = Math.max(900, count * 300);
  const height = Math.max(220, tallest * 120 + 40);
  const place = new Map();
  for (const [d, ids] of columns) {
    ids.forEach((id, i) => {
      const x = 100 + (count === 1 ? (width - 200) / 2 : (d * (width - 200)) / (count - 1));
      const y = ((i + 1) * height) / (ids.length + 1);
      place.set(id, { x, y });
    });
  }
  return { place, width, height, step: count === 1 ? width : (width - 200) / (count - 1) };
}

function renderTopology(doc) {
  const links = doc.edges.map((e) => [e.source, e.destination]);
  for (const key of Object.keys(doc.series.edges)) links.push(key.split("->"));
  const { place, width, height, step } = layout(doc.nodes, links);
  const box = { w: 140, h: 50 };
  const root = document.getElementById("topology");
  const services = new Map(doc.services.map((s) => [s.name, s]));
  const nodes = doc.nodes.map((node) => {
    const p = place.get(node.id);
    const service = services.get(node.id);
    const up = service ? service.instances.filter((i) => i.health === "passing" && i.scraped).length : 0;
    const total = service ? service.instances.length : 0;
    const degraded = service && up < total;
    const detail = node.meshed ? `${up}/${total} instances up` : "outside the mesh";
    const classes = ["node", node.meshed ? "" : "outside", degraded ? "degraded" : ""].join(" ").trim();
    return svg("g", { class: classes, "data-node": node.id, transform: `translate(${p.x - box.w / 2},${p.y - box.h / 2})` },
      svg("title", {}, `${node.id}: ${detail}`),
      svg("rect", { width: box.w, height: box.h, rx: 8 }),
      svg("text", { class: "name", x: box.w / 2, y: 21, "text-anchor": "middle" }, node.id),
      svg("text", { class: "detail", x: box.w / 2, y: 39, "text-anchor": "middle" }, detail));
  });
  const placed = []; // label centres drawn so far, to keep labels from covering each other
  const edges = doc.edges.map((edge) => {
    const a = place.get(edge.source);
    const b = place.get(edge.destination);
    if (!a || !b) return null;
    const forward = b.x > a.x;
    const x1 = a.x + (forward ? box.w / 2 : 0);
    const y1 = a.y + (forward ? 0 : box.h / 2);
    const x2 = b.x - (forward ? box.w / 2 : 0);
    const y2 = b.y + (forward ? 0 : box.h / 2);
    // An edge that skips columns arcs over the nodes between; a backward one loops below.
    const skipped = forward ? Math.max(0, Math.round((b.x - a.x) / step) - 1) : 0;
    const bend = forward ? -80 * skipped : 70;
    const cx = (x1 + x2) / 2;
    const cy = (y1 + y2) / 2 + bend;
    const mx = 0.25 * x1 + 0.5 * cx + 0.25 * x2; // the curve's midpoint
    const my = 0.25 * y1 + 0.5 * cy + 0.25 * y2;
    let ly = forward ? my - 24 : my + 16;
    while (placed.some((p) => Math.abs(p.x - mx) < 165 && Math.abs(p.y - ly) < 38)) ly += forward ? -38 : 38;
    placed.push({ x: mx, y: ly });
    const first = `${fmt.rps(edge.rps)} rps · ${fmt.pct(edge.success)}`;
    const second = `p50 ${fmt.ms(edge.p50)} · p99 ${fmt.ms(edge.p99)} ms`;
    return svg("g", { class: edge.failing ? "edge failing" : "edge", "data-edge": edge.id },
      svg("title", {}, `${edge.source} → ${edge.destination}: ${first}, ${second}`),
      svg("path", { d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`, "marker-end": edge.failing ? "url(#arrow-failing)" : "url(#arrow)" }),
      svg("rect", { class: "label-bg", x: mx - 80, y: ly - 13, width: 160, height: 34, rx: 4 }),
      svg("text", { class: "label", x: mx, y: ly, "text-anchor": "middle" }, first),
      svg("text", { class: "label", x: mx, y: ly + 16, "text-anchor": "middle" }, second));
  });
  const top = Math.min(0, ...placed.map((p) => p.y - 20));
  const bottom = Math.max(height, ...placed.map((p) => p.y + 30));
  root.setAttribute("viewBox", `0 ${top} ${width} ${bottom - top}`);
  replace("topology-nodes", nodes);
  replace("topology-edges", edges.filter(Boolean));
  const failing = doc.edges.filter((e) => e.failing).map((e) => `${e.source} to ${e.destination}`);
  document.getElementById("topology-desc").textContent =
    `${doc.nodes.length} services, ${doc.edges.length} edges with traffic` +
    (failing.length ? `; failing: ${failing.join(", ")}.` : "; none failing.");
}

// -- tables ----------------------------------------------------------------------------

function renderEdges(doc) {
  const rows = doc.edges.map((e) =>
    el("tr", { class: e.failing ? "failing" : null, "data-edge": e.id },
      el("td", {}, e.source), el("td", {}, e.destination),
      el("td", { class: "num rps" }, fmt.rps(e.rps)),
      el("td", { class: "num success" }, fmt.pct(e.success) + (e.failing ? " (failing)" : "")),
      el("td", { class: "num p50" }, fmt.ms(e.p50)),
      el("td", { class: "num p99" }, fmt.ms(e.p99)),
      el("td", {}, e.seen_by)));
  const body = document.querySelector("#edges tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7 }, "No traffic in this window."))]));
}

function expiry(seconds) {
  if (!seconds) return "–";
  const left = seconds - Date.now() / 1000;
  const when = new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  if (left < 0) return `expired (${when})`;
  const hours = left / 3600;
  return `${hours < 48 ? hours.toFixed(1) + " h" : (hours / 24).toFixed(0) + " d"} (${when})`;
}

function renderServices(doc) {
  const blocks = doc.services.map((service) => {
    const rows = service.instances.map((i) =>
      el("tr", { "data-instance": i.id },
        el("th", { scope: "row" }, i.id),
        el("td", {}, i.address),
        el("td", {}, i.version || "–"),
        el("td", { class: i.scraped ? `health-${i.health}` : "down" },
          i.health + (i.scraped ? "" : ", not answering")),
        el("td", { class: "num" }, i.in_flight === null ? "–" : String(i.in_flight)),
        el("td", {}, expiry(i.cert_expiry))));
    const breakers = service.breakers.length
      ? service.breakers.map((b, n) => [n ? ", " : "", `${b.caller}: `, el("strong", { class: b.state }, b.state)])
      : ["none reported"];
    return el("section", { class: "service", "aria-label": `Service ${service.name}`, "data-service": service.name },
      el("h3", {}, service.name),
      el("table", {},
        el("caption", {}, `Instances of ${service.name}`),
        el("thead", {}, el("tr", {},
          ...["Instance", "Address", "Version", "Health", "In flight", "Certificate expires"].map(
            (h, n) => el("th", { scope: "col", class: n === 4 ? "num" : null }, h)))),
        el("tbody", {}, rows)),
      el("p", { class: "breakers" }, "Circuit breakers seen by callers: ", breakers,
        ` · endpoint ejections by callers: ${service.ejections}`));
  });
  replace("services", blocks.length ? blocks : [el("p", {}, "No services in the registry.")]);
}

function renderPolicies(doc) {
  const rows = doc.intentions.map((i) =>
    el("tr", {}, el("td", {}, i.source), el("td", {}, i.destination), el("td", {}, i.action)));
  document.querySelector("#intentions tbody").replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 3 }, "No intentions: the default policy decides."))]));
  const manifests = doc.policies.map((m) => {
    const name = m.service || "app";
    const gets = new Set((m.routes || []).filter((r) => r.method === "GET").map((r) => r.path));
    // Starlette answers HEAD wherever it answers GET, with the same policies: one row.
    const shown = (m.routes || []).filter((r) => !(r.method === "HEAD" && gets.has(r.path)));
    const routes = shown.map((r) =>
      el("tr", {},
        el("td", {}, r.method), el("td", {}, el("code", {}, r.path)), el("td", {}, r.access),
        el("td", {}, [...(r.allow || []), r.allow_mesh ? "mesh" : null, r.anonymous ? "anonymous" : null].filter(Boolean).join(", ") || "–"),
        el("td", {}, (r.deny || []).join(", ") || "–"),
        el("td", {}, r.timeout ? `${r.timeout} s` : "–"),
        el("td", {}, (r.rate_limits || []).map((l) => `${l.rate_per_second}/s per ${l.per}`).join(", ") || "–"),
        el("td", {}, r.concurrency ? `${r.concurrency.limit} (+${r.concurrency.queue} queued)` : "–"),
        el("td", {}, r.idempotent ? "yes" : "–")));
    return el("table", { "data-policies": name },
      el("caption", {}, `Routes of ${name} (default policy: ${m.default_policy})`),
      el("thead", {}, el("tr", {}, ...["Method", "Path", "Access", "Allow", "Deny", "Timeout", "Rate limits", "Concurrency", "Idempotent"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, routes));
  });
  replace("routes", manifests.length
    ? [el("h3", {}, "Route policies"), ...manifests]
    : [el("p", { class: "hint" }, "Route policies: start the dashboard with --app MODULE:APP (or --manifest FILE) to show them.")]);
}

// -- time series -----------------------------------------------------------------------

function chart(key, points, times, keep) {
  const w = 320, h = 90, pad = 4;
  const end = times.length ? times[times.length - 1] : 0;
  const x = (t) => pad + ((t - (end - keep)) / keep) * (w - 2 * pad);
  let peak = 0;
  for (const p of points) if (p && p[0] > peak) peak = p[0];
  const top = peak > 0 ? peak * 1.1 : 1;
  const y = (v) => h - pad - (v / top) * (h - 2 * pad);
  const line = [];
  const bars = [];
  points.forEach((p, i) => {
    const rate = p ? p[0] || 0 : 0;
    line.push(`${x(times[i]).toFixed(1)},${y(rate).toFixed(1)}`);
    const failed = p && p[1] !== null ? rate * (1 - p[1]) : 0;
    if (failed > 0) {
      bars.push(svg("rect", { class: "errors", x: x(times[i]) - 1, y: y(failed), width: 2, height: h - pad - y(failed) }));
    }
  });
  const last = points.length ? points[points.length - 1] : null;
  const [source, destination] = key.split("->");
  const now = last ? `${fmt.rps(last[0])} rps, ${fmt.pct(last[1])} ok, p99 ${fmt.ms(last[3])} ms` : "idle";
  const failedTotal = bars.length;
  const desc = `Requests per second from ${source} to ${destination} over the last ${Math.round(keep / 60)} minutes: peak ${fmt.rps(peak)}, now ${now}; ${failedTotal} intervals with failures.`;
  const id = `chart-${key.replace(/[^a-z0-9]/gi, "_")}`;
  return el("figure", { class: "chart", "data-series": key },
    el("figcaption", { id: `${id}-title` }, `${source} → ${destination} `, el("span", { class: "now" }, now)),
    fill(svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc` }), {}, [
      svg("desc", { id: `${id}-desc` }, desc),
      svg("line", { class: "axis", x1: pad, y1: h - pad, x2: w - pad, y2: h - pad }),
      svg("text", { x: pad + 2, y: 12 }, `${fmt.rps(peak)} rps`),
      svg("text", { x: w - pad - 2, y: h - pad - 4, "text-anchor": "end" }, "now"),
      svg("text", { x: pad + 2, y: h - pad - 4 }, `−${Math.round(keep / 60)} min`),
      ...bars,
      svg("polyline", { class: "rate", points: line.join(" ") }),
    ]));
}

function renderSeries(doc) {
  const { times, edges, keep_seconds: keep } = doc.series;
  const charts = Object.keys(edges).sort().map((key) => chart(key, edges[key], times, keep));
  replace("series", charts.length ? charts : [el("p", {}, "No traffic yet.")]);
}

// -- wiring ----------------------------------------------------------------------------

function render(doc) {
  document.getElementById("window").textContent = doc.window_seconds.toFixed(0);
  document.getElementById("registry").textContent = doc.registry;
  document.getElementById("source").textContent = doc.source;
  renderTopology(doc);
  renderEdges(doc);
  renderSeries(doc);
  renderServices(doc);
  renderPolicies(doc);
  if (doc.error) setStatus("error", `Registry: ${doc.error}`);
  else setStatus("live", "Live");
  document.body.dataset.updated = String(doc.at);
}

function connect() {
  const events = new EventSource("/events");
  events.onmessage = (message) => {
    lastMessage = Date.now();
    render(JSON.parse(message.data));
  };
  events.onerror = () => setStatus("connecting", "Reconnecting…");
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > STALE_AFTER_MS) setStatus("stale", "No update for a while: is meshkit dashboard running?");
  }, 1000);
}

connect();
