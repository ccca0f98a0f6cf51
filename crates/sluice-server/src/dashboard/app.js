// sluice's dashboard: every number on these pages comes from the /api/v1 routes; the pages
// compute nothing the API does not answer (they only format and draw it). Plain JavaScript,
// no build step, no library: the charts are inline SVG drawn by `lineChart` below.
"use strict";

// Errors of the page itself (a script error, a failed promise, console.error) are kept so a
// test can read them and shown at the foot of the page.
window.__sluiceErrors = [];
(function () {
  const keep = (text) => {
    window.__sluiceErrors.push(String(text));
    const foot = document.getElementById("updated");
    if (foot) foot.textContent = "page error: " + text;
  };
  window.addEventListener("error", (e) => keep(e.message || "script error"));
  window.addEventListener("unhandledrejection", (e) => keep("unhandled: " + (e.reason && e.reason.message || e.reason)));
  const original = console.error.bind(console);
  console.error = (...args) => { keep(args.join(" ")); original(...args); };
})();

const TOKEN_KEY = "sluice-api-token";
const POLL_MS = { overview: 5000, pipeline: 5000, deployment: 1000, history: 5000 };

// ---- the API ----

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const e = body && body.error;
    throw new ApiError(response.status, e ? e.kind : "external", e ? e.message : "HTTP " + response.status);
  }
  return body;
}

// ---- formatting (the browser tests format the API's numbers the same way) ----

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : String(n)),
  rate: (n) => (n === null || n === undefined ? "–" : n.toFixed(1)),
  pct: (n) => (n === null || n === undefined ? "–" : (n * 100).toFixed(1) + "%"),
  ms: (n) => (n === null || n === undefined ? "–" : Math.round(n) + " ms"),
  value: (n) => (n === null || n === undefined ? "–" : Number.isInteger(n) ? String(n) : n.toFixed(3)),
  time: (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–"),
  duration: (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  },
};

// ---- building the DOM ----

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    // through the CSSOM: the page's content security policy refuses style attributes
    else if (k === "style") el.style.cssText = v;
    else if (k === "onclick") el.addEventListener("click", v);
    else if (k.startsWith("data_")) el.setAttribute("data-" + k.slice(5).replace(/_/g, "-"), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/// A cell whose text a test reads by its key.
function cell(key, text, cls) {
  return h("td", { class: cls, data_k: key }, text);
}

function stateBadge(state, key) {
  return h("span", { class: "state " + state, data_k: key }, state);
}

function card(label, value, key) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", data_k: key }, value));
}

function errorBox(e) {
  const who = e.status === 401 ? "Give the API token in the field at the top right." : "";
  return h("div", { class: "error-box", data_k: "error" }, e.message, " ", who);
}

// ---- charts: inline SVG ----

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fd6", "#e07b1a", "#1f9d55", "#8e44ad", "#c0392b", "#16a085"];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/// A line chart of `series` ([{name, color, points: [[x, y, dotColor?]]}]) over time.
function lineChart(title, series, yFormat, key) {
  const W = 560, H = 200, L = 56, R = 12, T = 10, B = 26;
  const all = series.flatMap((x) => x.points).filter((p) => p[1] !== null && p[1] !== undefined);
  const box = h("div", { class: "chart panel", data_k: key }, h("div", { class: "title" }, title));
  if (all.length === 0) {
    box.append(h("p", { class: "muted" }, "nothing measured yet"));
    return box;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) { x0 -= 1000; x1 += 1000; }
  let y1 = Math.max(...all.map((p) => p[1]));
  let y0 = Math.min(0, ...all.map((p) => p[1]));
  if (y1 === y0) y1 = y0 + 1;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(y), y2: Y(y), stroke: "#e3e6ec" }));
    svg.append(s("text", { x: L - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#6b7385" }, yFormat(y)));
  }
  for (const x of [x0, (x0 + x1) / 2, x1]) {
    svg.append(s("text", { x: X(x), y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#6b7385" }, fmt.time(x)));
  }
  for (const line of series) {
    const pts = line.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (pts.length > 1) {
      svg.append(s("polyline", { points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: line.color, "stroke-width": 2 }));
    }
    for (const p of pts) {
      svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: p[2] || line.color }));
    }
  }
  box.append(svg);
  box.append(h("div", { class: "legend" }, series.map((x) => h("span", {}, h("i", { style: "background:" + x.color }), x.name))));
  return box;
}

const PHASE_COLOR = { successful: "#1f9d55", failed: "#d33a3a", inconclusive: "#c9a000", error: "#8e44ad" };

// ---- pages ----

async function overviewPage() {
  const [list, status] = await Promise.all([api("/api/v1/pipelines"), api("/api/v1/status")]);
  const pipelines = list.pipelines;
  const measured = await Promise.all(
    pipelines.map((p) => api(`/api/v1/pipelines/${encodeURIComponent(p.pipeline)}/measurements?window=1h`)),
  );
  const alive = status.workers.filter((w) => w.state !== "stopped" && w.state !== "lost");
  const active = new Map(status.deployments.map((d) => [d.pipeline, d]));
  const rows = pipelines.map((p, i) => {
    const m = measured[i].versions.find((v) => v.version === p.current_version);
    const k = (f) => `overview:${p.pipeline}:${f}`;
    const d = active.get(p.pipeline);
    return h(
      "tr",
      { data_pipeline: p.pipeline },
      h("td", {}, h("a", { href: `#/pipelines/${encodeURIComponent(p.pipeline)}` }, p.pipeline)),
      cell(k("version"), "v" + p.current_version),
      cell(k("pending"), fmt.int(p.pending), "num"),
      cell(k("leased"), fmt.int(p.leased), "num"),
      cell(k("done"), fmt.int(p.done), "num"),
      cell(k("quarantined"), fmt.int(p.quarantined), "num"),
      cell(k("rows_per_second"), fmt.rate(p.rows_per_second), "num"),
      cell(k("error_rate"), fmt.pct(m ? m.error_rate : null), "num"),
      h(
        "td",
        {},
        d
          ? h("a", { href: `#/pipelines/${encodeURIComponent(p.pipeline)}/deployment` }, stateBadge(d.state, k("deployment")), ` v${d.stable_version} → v${d.candidate_version}`)
          : h("span", { class: "muted", data_k: k("deployment") }, "none"),
        p.failed ? h("div", { class: "error-box" }, p.failed) : null,
      ),
    );
  });
  return [
    h("h1", {}, "Pipelines"),
    h(
      "div",
      { class: "cards" },
      card("pipelines", fmt.int(pipelines.length), "overview:pipelines"),
      card("workers alive", fmt.int(alive.length), "overview:workers"),
      card("deployments in progress", fmt.int(status.deployments.length), "overview:deployments"),
      card("leader", status.leader ? status.leader.holder : "none", "overview:leader"),
    ),
    pipelines.length === 0
      ? h("p", { class: "muted" }, "No pipelines yet: `sluice run SPEC` or POST /api/v1/pipelines/NAME/versions registers one.")
      : h(
          "table",
          { data_k: "overview:table" },
          h("thead", {}, h("tr", {}, ["pipeline", "version"].map((x) => h("th", {}, x)),
            ["backlog", "leased", "done", "quarantined", "rows/s", "error rate (1h)"].map((x) => h("th", { class: "num" }, x)),
            h("th", {}, "deployment"))),
          h("tbody", {}, rows),
        ),
    h("h2", {}, "Workers"),
    h(
      "table",
      { data_k: "overview:workers-table" },
      h("thead", {}, h("tr", {}, ["worker", "host", "state", "last heartbeat"].map((x) => h("th", {}, x)))),
      h("tbody", {}, status.workers.map((w) => h("tr", {}, h("td", {}, w.worker), h("td", {}, w.host), h("td", {}, stateBadge(w.state)), h("td", {}, fmt.time(w.last_heartbeat))))),
    ),
  ];
}

async function pipelinePage(name) {
  const base = `/api/v1/pipelines/${encodeURIComponent(name)}`;
  const [detail, series, page, held, measured] = await Promise.all([
    api(base),
    api(base + "/series?window=1h&step=1m"),
    api(base + "/batches?limit=1000"),
    api(base + "/quarantine?limit=20"),
    api(base + "/measurements?window=1h"),
  ]);
  const k = (f) => `pipeline:${name}:${f}`;
  const versions = [...new Set(series.points.map((p) => p.version))].sort((a, b) => a - b);
  const color = (v) => PALETTE[versions.indexOf(v) % PALETTE.length];
  const perVersion = (field) =>
    versions.map((v) => ({
      name: "v" + v,
      color: color(v),
      points: series.points.filter((p) => p.version === v).map((p) => [p.at, p[field]]),
    }));
  const recent = page.batches.slice(-20).reverse();
  const checks = measured.versions.flatMap((v) => v.checks.map((c) => ({ ...c, version: v.version })));
  return [
    h("h1", {}, name, " ", h("span", { class: "muted" }, "v" + detail.current_version)),
    h(
      "div",
      { class: "cards" },
      card("backlog", fmt.int(detail.pending), k("pending")),
      card("leased", fmt.int(detail.leased), k("leased")),
      card("done", fmt.int(detail.done), k("done")),
      card("quarantined", fmt.int(detail.quarantined), k("quarantined")),
      card("rows in", fmt.int(detail.rows_in), k("rows_in")),
      card("rows out", fmt.int(detail.rows_out), k("rows_out")),
      card("rows/s", fmt.rate(detail.rows_per_second), k("rows_per_second")),
    ),
    h("p", {}, h("a", { href: `#/pipelines/${encodeURIComponent(name)}/deployment` }, "Deployment →")),
    h(
      "div",
      { class: "charts" },
      lineChart("Throughput (rows/s published, per minute)", perVersion("rows_per_second"), (y) => y.toFixed(1), k("chart:throughput")),
      lineChart("Latency (mean batch run, ms)", perVersion("mean_duration_ms"), (y) => Math.round(y) + "", k("chart:latency")),
    ),
    h("h2", {}, "Versions"),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["version", "spec hash", "registered", ""].map((x) => h("th", {}, x)))),
      h("tbody", {}, detail.versions.map((v) => h("tr", {}, cell(k(`version:${v.version}`), "v" + v.version), h("td", {}, h("code", {}, v.spec_hash.slice(0, 12))), h("td", {}, new Date(v.created_at).toLocaleString()), h("td", {}, v.current ? "current" : "")))),
    ),
    h("h2", {}, "Recent batches"),
    h(
      "table",
      { data_k: k("batches") },
      h("thead", {}, h("tr", {}, h("th", {}, "batch"), h("th", {}, "version"), h("th", {}, "state"), h("th", { class: "num" }, "attempts"), h("th", { class: "num" }, "rows in"), h("th", { class: "num" }, "rows out"), h("th", {}, "error"))),
      h("tbody", {}, recent.map((b) => h("tr", { data_batch: b.batch_id }, h("td", {}, h("code", {}, b.batch_id)), h("td", {}, "v" + b.version), h("td", {}, stateBadge(b.state)), h("td", { class: "num" }, b.attempts), h("td", { class: "num" }, fmt.int(b.rows_in)), h("td", { class: "num" }, fmt.int(b.rows_out)), h("td", {}, b.last_error || "")))),
    ),
    page.next !== null && page.next !== undefined ? h("p", { class: "muted" }, "first 1000 batches in queue order; more with ?after=" + page.next) : null,
    h("h2", {}, "Quarantine"),
    held.batches.length === 0 && held.rows.length === 0
      ? h("p", { class: "muted", data_k: k("quarantine") }, "nothing held")
      : h(
          "table",
          { data_k: k("quarantine") },
          h("thead", {}, h("tr", {}, ["batch", "check", "reason", "row"].map((x) => h("th", {}, x)))),
          h("tbody", {},
            held.batches.map((b) => h("tr", {}, h("td", {}, h("code", {}, b.batch_id)), h("td", {}, "(batch)"), h("td", {}, b.last_error || ""), h("td", {}, ""))),
            held.rows.map((r) => h("tr", {}, h("td", {}, h("code", {}, r.batch_id)), h("td", {}, r.check), h("td", {}, r.reason), h("td", {}, h("code", {}, r.row))))),
        ),
    h("h2", {}, "Checks (last hour)"),
    checks.length === 0
      ? h("p", { class: "muted" }, "no check results in the last hour")
      : h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", {}, "version"), h("th", {}, "check"), h("th", {}, "level"), h("th", { class: "num" }, "batch runs"), h("th", { class: "num" }, "failing rows"))),
          h("tbody", {}, checks.map((c) => h("tr", {}, h("td", {}, "v" + c.version), h("td", {}, c.check), h("td", {}, stateBadge(c.level)), cell(k(`check:${c.version}:${c.check}:${c.level}`), fmt.int(c.results), "num"), h("td", { class: "num" }, fmt.int(c.failing_rows))))),
        ),
  ];
}

function stepText(step) {
  if (step.set_weight !== undefined) return `set weight ${step.set_weight}%`;
  if (step.pause !== undefined) return step.pause && step.pause.duration ? `pause ${step.pause.duration}` : "pause until promoted";
  if (step.analysis !== undefined) return "analysis: " + (step.analysis.metrics || []).map((m) => m.name).join(", ");
  return JSON.stringify(step);
}

/// The last result of a command button, kept across the page's polls.
let lastAction = null;

async function deploymentPage(name) {
  const base = `/api/v1/pipelines/${encodeURIComponent(name)}`;
  let view;
  try {
    view = await api(base + "/deployments/current");
  } catch (e) {
    if (e.status === 404) return [h("h1", {}, name, ": deployment"), h("p", { class: "muted", data_k: "deployment:none" }, e.message)];
    throw e;
  }
  const d = view.deployment;
  const k = (f) => `deployment:${f}`;
  const steps = (view.policy && view.policy.steps) || [];
  const weight = Math.min(100, d.route.weight);
  const act = async (what, body) => {
    const result = document.getElementById("action-result");
    try {
      await api(`${base}/deployments/current/${what}`, { method: "POST", body: body || {} });
      lastAction = { cls: "accepted", text: `${what}: accepted` };
    } catch (e) {
      lastAction = { cls: "refused", text: `${what} refused (${e.status}): ${e.message}` };
    }
    if (result) {
      result.className = lastAction.cls;
      result.textContent = lastAction.text;
    }
    refresh();
  };
  const active = d.outcome === null || d.outcome === undefined;
  const charts = view.metrics.map((m) => {
    const of = view.measurements.filter((x) => x.analysis === m.analysis && x.metric === m.metric);
    return lineChart(
      `${m.analysis} / ${m.metric}`,
      [
        // stable first, so the candidate's phase-coloured points are drawn over it
        { name: `stable v${d.stable_version}`, color: "#2f6fd6", points: of.map((x) => [x.measured_at, x.stable_value]) },
        { name: `candidate v${d.candidate_version}`, color: "#e07b1a", points: of.map((x) => [x.measured_at, x.value, PHASE_COLOR[x.phase]]) },
      ],
      fmt.value,
      k(`chart:${m.analysis}:${m.metric}`),
    );
  });
  return [
    h("h1", {}, `${name}: deployment #${d.id}`, " ", stateBadge(d.state, k("state"))),
    h(
      "div",
      { class: "cards" },
      card("versions", `v${d.stable_version} → v${d.candidate_version}`, k("versions")),
      card("strategy", d.strategy, k("strategy")),
      card("step", steps.length ? `${Math.min(d.step + 1, steps.length)} of ${steps.length}` : "–", k("step")),
      card("candidate weight", weight + "%", k("weight")),
      card("outcome", d.outcome || "in progress", k("outcome")),
      card("started by", d.started_by, k("started_by")),
    ),
    h(
      "div",
      { class: "weights", data_k: k("weights") },
      h("div", { class: "stable", style: `width:${100 - weight}%` }, `v${d.stable_version} ${100 - weight}%`),
      h("div", { class: "candidate", style: `width:${weight}%` }, `v${d.candidate_version} ${weight}%`),
    ),
    d.reason ? h("p", {}, "reason: ", h("span", { data_k: k("reason") }, d.reason)) : null,
    active
      ? h(
          "div",
          { class: "actions" },
          h("button", { class: "primary", id: "promote", onclick: () => act("promote", { full: false }) }, "Promote"),
          h("button", { id: "promote-full", onclick: () => act("promote", { full: true }) }, "Promote fully"),
          h("button", { id: "pause", onclick: () => act("pause") }, "Pause"),
          h("button", { id: "resume", onclick: () => act("resume") }, "Resume"),
          h("button", { class: "danger", id: "abort", onclick: () => act("abort") }, "Abort"),
          h("span", { id: "action-result", class: lastAction ? lastAction.cls : "" }, lastAction ? lastAction.text : ""),
        )
      : h("p", { class: "muted" }, "ended ", fmt.time(d.finished_at)),
    steps.length
      ? h("div", { class: "panel" }, h("b", {}, "Steps"), h("ol", { class: "steps", data_k: k("steps") }, steps.map((st, i) => h("li", { class: i === d.step ? "current" : i < d.step ? "done" : "" }, stepText(st)))))
      : null,
    h("h2", {}, "Analysis"),
    view.metrics.length === 0
      ? h("p", { class: "muted", data_k: k("analysis") }, "no measurements yet")
      : h(
          "table",
          { data_k: k("analysis") },
          h("thead", {}, h("tr", {}, h("th", {}, "analysis"), h("th", {}, "metric"), h("th", {}, "last phase"), h("th", { class: "num" }, "candidate"), h("th", { class: "num" }, "stable"), h("th", { class: "num" }, "measured"), h("th", {}, "message"))),
          h("tbody", {}, view.metrics.map((m) => {
            const mk = (f) => k(`metric:${m.analysis}:${m.metric}:${f}`);
            return h("tr", {}, h("td", {}, m.analysis), h("td", {}, m.metric), h("td", {}, stateBadge(m.last_phase, mk("phase"))), cell(mk("value"), fmt.value(m.last_value), "num"), cell(mk("stable_value"), fmt.value(m.last_stable_value), "num"), cell(mk("measured"), fmt.int(m.measured), "num"), h("td", {}, m.last_message));
          })),
        ),
    h("div", { class: "charts" }, charts),
    h("h2", {}, "Events"),
    h("table", {}, h("tbody", {}, view.events.slice(-12).reverse().map((e) => h("tr", {}, h("td", {}, fmt.time(e.at)), h("td", {}, e.to_state), h("td", {}, e.message))))),
  ];
}

async function historyPage() {
  const list = await api("/api/v1/pipelines");
  const histories = await Promise.all(
    list.pipelines.map((p) => api(`/api/v1/pipelines/${encodeURIComponent(p.pipeline)}/deployments?limit=100`)),
  );
  const all = histories.flatMap((x) => x.deployments).sort((a, b) => b.deployment.created_at - a.deployment.created_at);
  if (all.length === 0) return [h("h1", {}, "Deployments"), h("p", { class: "muted", data_k: "history:none" }, "No deployments yet.")];
  const now = Date.now();
  return [
    h("h1", {}, "Deployments"),
    h(
      "table",
      { data_k: "history:table" },
      h("thead", {}, h("tr", {}, ["#", "pipeline", "versions", "strategy", "outcome", "started by", "took", "reason", "metrics: before → after (candidate | stable)"].map((x) => h("th", {}, x)))),
      h("tbody", {}, all.map((v) => {
        const d = v.deployment;
        const k = (f) => `history:${d.id}:${f}`;
        return h(
          "tr",
          { data_deployment: d.id },
          h("td", {}, h("a", { href: `#/pipelines/${encodeURIComponent(d.pipeline)}/deployment` }, "#" + d.id)),
          h("td", {}, d.pipeline),
          cell(k("versions"), `v${d.stable_version} → v${d.candidate_version}`),
          h("td", {}, d.strategy),
          h("td", {}, stateBadge(d.outcome || d.state, k("outcome"))),
          h("td", {}, d.started_by),
          h("td", {}, fmt.duration((d.finished_at || now) - d.created_at)),
          h("td", {}, d.reason || ""),
          h("td", {}, v.metrics.length === 0 ? h("span", { class: "muted" }, "none measured") : h("table", {}, h("tbody", {}, v.metrics.map((m) => {
            const mk = (f) => k(`metric:${m.analysis}:${m.metric}:${f}`);
            return h("tr", {}, h("td", {}, `${m.analysis}/${m.metric}`),
              h("td", { class: "metric-pair" }, h("span", { data_k: mk("first_value") }, fmt.value(m.first_value)), " → ", h("span", { data_k: mk("last_value") }, fmt.value(m.last_value))),
              h("td", { class: "metric-pair muted" }, h("span", { data_k: mk("first_stable_value") }, fmt.value(m.first_stable_value)), " → ", h("span", { data_k: mk("last_stable_value") }, fmt.value(m.last_stable_value))),
              h("td", {}, stateBadge(m.last_phase)), h("td", { class: "num", data_k: mk("measured") }, fmt.int(m.measured)));
          })))),
        );
      })),
    ),
  ];
}

// ---- routing and polling ----

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "history") return { page: "history", render: historyPage };
  if (parts[0] === "pipelines" && parts[1] && parts[2] === "deployment") return { page: "deployment", render: () => deploymentPage(parts[1]) };
  if (parts[0] === "pipelines" && parts[1]) return { page: "pipeline", render: () => pipelinePage(parts[1]) };
  return { page: "overview", render: overviewPage };
}

let generation = 0;
let timer = null;
let renders = 0;

async function refresh() {
  const mine = ++generation;
  clearTimeout(timer);
  const r = route();
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === r.page));
  let content;
  try {
    content = await r.render();
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    content = [errorBox(e)];
  }
  if (mine !== generation) return; // a newer refresh (or another page) took over
  document.getElementById("main").replaceChildren(...content.filter(Boolean));
  document.body.dataset.page = r.page;
  document.body.dataset.renders = String(++renders);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  timer = setTimeout(refresh, POLL_MS[r.page]);
}

function showTokenState() {
  document.getElementById("token-state").textContent = token() ? "token set" : "no token";
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const field = document.getElementById("token");
  if (field.value.trim()) sessionStorage.setItem(TOKEN_KEY, field.value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
  field.value = "";
  showTokenState();
  refresh();
});

window.addEventListener("hashchange", () => {
  lastAction = null;
  refresh();
});
showTokenState();
refresh();
