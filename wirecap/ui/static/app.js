// wirecap inspector. Plain JavaScript, no library, no build step.
//
// Everything captured reaches the screen as text: the DOM is built with createElement and
// textContent (never parsed as markup), so a captured "<script>" is shown, not run; the server's
// Content-Security-Policy refuses inline script besides.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 100;
const FILTERS = ["q", "route", "status", "model", "since", "until", "finding"];

const state = {
  query: {},          // filters, sort, dir, offset: what the list URL says
  rows: [],           // the page shown
  selected: 0,        // index of the selected row in the page
  matched: 0,
  version: 0,         // the table's version the page last saw
  detailId: null,     // the exchange open in the detail view
  detail: null,
  tab: "conversation",
  rawSide: "response",
  rawMode: "text",
  listLoading: false,
  listDirty: false,
  detailLoading: false,
  detailDirty: false,
  connected: true,
  summary: null,
};

// -- small helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function ms(value) {
  if (value === null || value === undefined) return "-";
  if (value < 10) return value.toFixed(2) + " ms";
  if (value < 100) return value.toFixed(1) + " ms";
  if (value < 1000) return Math.round(value) + " ms";
  if (value < 60000) return (value / 1000).toFixed(2) + " s";
  return (value / 60000).toFixed(1) + " min";
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function num(n) {
  return n === null || n === undefined ? "-" : n.toLocaleString();
}

function localTime(startMs, withDate) {
  if (startMs === null || startMs === undefined) return "-";
  const d = new Date(startMs);
  const pad = (v, w = 2) => String(v).padStart(w, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
}

function statusClass(status) {
  if (status === null || status === undefined) return "sx";
  return "s" + String(status)[0];
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const sleep = (ms_) => new Promise((resolve) => setTimeout(resolve, ms_));

// -- theme --------------------------------------------------------------------------------------

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
}

function initialTheme() {
  const saved = localStorage.getItem("wirecap-theme");
  if (saved === "dark" || saved === "light") return saved;
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function toggleTheme() {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem("wirecap-theme", next);
  applyTheme(next);
}

// -- routing: #/?filters for the list, #/x/ID for one exchange ----------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const match = path.match(/^\/x\/([0-9A-Za-z_-]+)$/);
  return { id: match ? match[1] : null, params: new URLSearchParams(search || "") };
}

function listHash(query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== "" && value !== null && value !== undefined && !(key === "offset" && Number(value) === 0)) {
      params.set(key, value);
    }
  }
  const text = params.toString();
  return "#/" + (text ? "?" + text : "");
}

let lastListHash = "#/";

function route() {
  const { id, params } = parseHash();
  if (id) {
    openDetail(id);
    return;
  }
  lastListHash = location.hash || "#/";
  const query = {};
  for (const key of [...FILTERS, "sort", "dir", "offset"]) query[key] = params.get(key) || "";
  state.query = query;
  for (const key of FILTERS) if ($(key) && document.activeElement !== $(key)) $(key).value = query[key];
  showList();
  loadList();
}

// -- the list -----------------------------------------------------------------------------------

function showList() {
  state.detailId = null;
  state.detail = null;
  $("detail-view").hidden = true;
  $("detail-view").replaceChildren();
  $("list-view").hidden = false;
}

function listUrl() {
  const params = new URLSearchParams();
  for (const key of FILTERS) if (state.query[key]) params.set(key, state.query[key]);
  params.set("sort", state.query.sort || "time");
  params.set("dir", state.query.dir || "desc");
  params.set("offset", state.query.offset || "0");
  params.set("limit", String(PAGE));
  return "/api/exchanges?" + params.toString();
}

async function loadList() {
  if (state.listLoading) {
    state.listDirty = true;
    return;
  }
  state.listLoading = true;
  try {
    do {
      state.listDirty = false;
      try {
        const page = await api(listUrl());
        $("filter-error").textContent = "";
        renderList(page);
      } catch (error) {
        $("filter-error").textContent = error.message;
      }
    } while (state.listDirty);
  } finally {
    state.listLoading = false;
  }
}

function findingBadges(findings) {
  return findings.map((f) => el("span", { class: `badge ${f.severity}`, title: f.severity, text: f.code }));
}

function rowElement(row, index) {
  const live = row.live;
  const reads = `${row.chunks} read${row.chunks === 1 ? "" : "s"}, ${bytes(row.res_bytes)}`;
  const outcome = live ? el("span", { class: "pulse", title: reads }, `● streaming · ${reads}`) : row.outcome;
  const tr = el(
    "tr",
    { "data-id": row.id, class: (live ? "live " : "") + (index === state.selected ? "selected" : ""), onclick: () => go(row.id) },
    el("td", { class: "mono", title: row.start || "" }, localTime(row.start_ms, false)),
    el("td", {}, row.method || "-"),
    el("td", {}, row.route || "-"),
    el("td", { class: "path", title: row.path || "" }, row.path || "-"),
    el("td", { class: "model", title: row.model || "" }, row.model || "-"),
    el("td", { class: "num " + statusClass(row.status) }, row.status === null ? "-" : row.status),
    el("td", { class: "num" }, ms(row.ttft_ms)),
    el("td", { class: "num" }, ms(row.duration_ms)),
    el("td", { class: "num" }, num(row.input_tokens)),
    el("td", { class: "num" }, num(row.output_tokens)),
    el("td", { class: "outcome" + (row.outcome !== "ok" && !live ? " sx" : "") }, outcome),
    el("td", { class: "findings-cell" }, ...findingBadges(row.findings)),
  );
  return tr;
}

function renderList(page) {
  const selectedId = state.rows[state.selected] && state.rows[state.selected].id;
  state.rows = page.rows;
  state.matched = page.matched;
  const keep = page.rows.findIndex((r) => r.id === selectedId);
  state.selected = keep >= 0 ? keep : Math.min(state.selected, Math.max(page.rows.length - 1, 0));
  $("rows").replaceChildren(...page.rows.map(rowElement));
  const offset = page.offset;
  const empty = $("empty");
  if (!page.rows.length) {
    empty.hidden = false;
    empty.textContent = page.total
      ? `No exchange matches (${page.total.toLocaleString()} in the capture).`
      : "No exchanges yet: they appear here as they are captured.";
  } else {
    empty.hidden = true;
  }
  $("range").textContent = page.matched
    ? `${(offset + 1).toLocaleString()}–${(offset + page.rows.length).toLocaleString()} of ${page.matched.toLocaleString()}` +
      (page.matched !== page.total ? ` (${page.total.toLocaleString()} in all)` : "")
    : "";
  $("prev").disabled = offset <= 0;
  $("next").disabled = offset + page.rows.length >= page.matched;
  for (const th of document.querySelectorAll("#list th[data-sort]")) {
    const sorted = th.dataset.sort === (state.query.sort || "time");
    th.setAttribute("aria-sort", sorted ? ((state.query.dir || "desc") === "asc" ? "ascending" : "descending") : "none");
  }
}

function setQuery(changes, resetOffset = true) {
  const query = { ...state.query, ...changes };
  if (resetOffset) query.offset = "";
  location.hash = listHash(query);
}

function page(step) {
  const offset = Math.max(0, Number(state.query.offset || 0) + step * PAGE);
  if (step > 0 && offset >= state.matched) return;
  setQuery({ offset: String(offset) }, false);
}

function select(index) {
  if (!state.rows.length) return;
  state.selected = Math.max(0, Math.min(state.rows.length - 1, index));
  const trs = $("rows").children;
  for (let i = 0; i < trs.length; i++) trs[i].classList.toggle("selected", i === state.selected);
  const tr = trs[state.selected];
  if (tr) tr.scrollIntoView({ block: "nearest" });
}

function go(id) {
  location.hash = "#/x/" + encodeURIComponent(id);
}

let filterTimer = null;
function onFilterInput() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    const changes = {};
    for (const key of FILTERS) changes[key] = $(key).value.trim();
    setQuery(changes);
  }, 250);
}

function renderFacets(facets) {
  const route = $("route");
  const current = route.value;
  const routes = facets.routes.map(([name, count]) => el("option", { value: name }, `${name || "(no route)"} (${count})`));
  route.replaceChildren(el("option", { value: "" }, "every route"), ...routes);
  route.value = current;
  $("models").replaceChildren(...facets.models.map(([name]) => el("option", { value: name })));
  const finding = $("finding");
  const chosen = finding.value;
  const fixed = [...finding.querySelectorAll("option[data-fixed]")];
  if (!fixed.length) for (const option of finding.options) option.dataset.fixed = "1";
  const base = [...finding.querySelectorAll("option[data-fixed]")];
  const codes = facets.findings.map(([code, count]) => el("option", { value: code }, `${code} (${count})`));
  finding.replaceChildren(...base, ...codes);
  finding.value = chosen || state.query.finding || "";
}

// -- live updates -------------------------------------------------------------------------------

function renderState(info) {
  const dot = el("span", { class: "dot " + (state.connected ? "on" : "off") });
  let text;
  if (!state.connected) text = "disconnected: retrying";
  else if (!info.caught_up) text = `reading the capture: ${num(info.exchanges)} exchanges, ${bytes(info.bytes_read)}`;
  else text = `live · ${num(info.exchanges)} exchanges` + (info.in_flight ? ` · ${info.in_flight} in flight` : "");
  $("state").replaceChildren(dot, text);
}

async function watch() {
  for (;;) {
    try {
      const change = await api(`/api/changes?after=${state.version}&wait=20`);
      state.connected = true;
      renderState(change);
      if (change.version !== state.version) {
        state.version = change.version;
        onChanged(change.changed);
      }
    } catch (error) {
      state.connected = false;
      renderState({});
      await sleep(2000);
    }
  }
}

let facetsTimer = null;
function onChanged(changed) {
  if (state.detailId === null) loadList();
  else if (changed === null || changed.includes(state.detailId) || (state.detail && state.detail.live)) loadDetail();
  clearTimeout(facetsTimer);
  facetsTimer = setTimeout(loadSummary, 1000);
}

async function loadSummary() {
  try {
    const summary = await api("/api/summary");
    state.summary = summary;
    $("targets").textContent = summary.targets.join(", ");
    $("targets").title = summary.damage.length ? "damaged: " + summary.damage.join("; ") : "";
    renderFacets(summary.facets);
    renderState(summary);
  } catch (error) {
    /* the watch loop reports the connection */
  }
}

// -- the detail view ----------------------------------------------------------------------------

function openDetail(id) {
  if (state.detailId !== id) {
    state.detailId = id;
    state.detail = null;
    $("detail-view").replaceChildren(el("p", { class: "muted" }, "Loading…"));
  }
  $("list-view").hidden = true;
  $("detail-view").hidden = false;
  loadDetail();
}

async function loadDetail() {
  if (state.detailLoading) {
    state.detailDirty = true;
    return;
  }
  state.detailLoading = true;
  try {
    do {
      state.detailDirty = false;
      const id = state.detailId;
      if (id === null) break;
      try {
        const detail = await api("/api/exchanges/" + encodeURIComponent(id));
        if (state.detailId === id) {
          state.detail = detail;
          const scroll = window.scrollY;
          renderDetail(detail);
          window.scrollTo(0, scroll);
        }
      } catch (error) {
        if (state.detailId === id) $("detail-view").replaceChildren(backLink(), el("p", { class: "error" }, error.message));
      }
    } while (state.detailDirty);
  } finally {
    state.detailLoading = false;
  }
}

function backLink() {
  return el("a", { href: lastListHash, class: "back", title: "Back to the list (Esc)" }, "← list");
}

function fact(label, value, cls) {
  const shown = value === null || value === undefined || value === "" ? "-" : value;
  return [el("div", {}, el("dt", {}, label), el("dd", { class: cls || null }, shown))];
}

function download(id, path, label, title) {
  return el("a", { href: `/api/exchanges/${encodeURIComponent(id)}/${path}`, download: "", title }, label);
}

function copyButton(getText) {
  const button = el("button", { type: "button", title: "Copy" }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(getText());
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Select and copy";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  return button;
}

function command(label, text) {
  return el("div", { class: "command" }, el("span", { class: "label" }, label), el("pre", { class: "mono" }, text), copyButton(() => text));
}

function renderDetail(d) {
  const answer = d.answer;
  const usage = answer && answer.usage;
  const head = el(
    "div",
    { class: "dhead" },
    backLink(),
    el("h1", {}, `${d.method || "-"} ${d.path || "-"}`),
    el("span", { class: "num " + statusClass(d.status) }, d.status === null ? "no status" : String(d.status)),
    d.live ? el("span", { class: "badge live pulse" }, "streaming") : el("span", { class: d.outcome === "ok" ? "muted" : "sx" }, d.outcome),
    el("span", { class: "id mono", title: "exchange id" }, d.id),
  );
  const facts = el(
    "dl",
    { class: "facts" },
    ...fact("started", d.start ? localTime(Date.parse(d.start), true) : null),
    ...fact("model", answer ? (answer.model || "-") + (answer.model_requested && answer.model_requested !== answer.model ? ` (asked ${answer.model_requested})` : "") : null),
    ...fact("route → upstream", `${d.route || "(none)"} → ${d.upstream_url || "(answered by wirecap)"}`),
    ...fact("duration", ms(d.duration_ms) + (d.live ? " so far" : "")),
    ...fact("time to first byte", ms(d.ttfb_ms)),
    ...fact("time to first token", ms(d.ttft_ms)),
    ...fact("tokens in / out / cached", usage ? `${num(usage.input)} / ${num(usage.output)} / ${num(usage.cached)}` : null),
    ...fact("tokens per second", answer && answer.tokens_per_second !== null ? answer.tokens_per_second : null),
    ...fact("finish reason", answer ? answer.finish_reason : null),
    ...fact("bytes in / out", `${bytes(d.req_bytes)} / ${bytes(d.res_bytes)}`),
    ...fact("client", d.client),
    ...(d.error ? fact("error", d.error, "error") : []),
  );
  const actions = el(
    "div",
    { class: "actions" },
    download(d.id, "raw/request", "Raw request", "the request exactly as the client sent it"),
    d.raw.upstream ? download(d.id, "raw/upstream", "Raw upstream request", "the request as it went upstream") : null,
    download(d.id, "raw/response", "Raw response", "the response exactly as the upstream sent it"),
    download(d.id, "har", "HAR", "this exchange as HAR 1.2"),
    download(d.id, "capture", "Capture file", "this exchange alone, as a .cbor.zst capture (for wirecap replay)"),
    d.commands.curl_needs_body_file ? download(d.id, "raw/request-body", "Request body", "the body the curl command reads") : null,
  );
  const commands = el("div", {}, command("curl", d.commands.curl), command("replay", d.commands.replay));
  const findings = d.findings.length
    ? el("ul", { class: "findings" }, ...d.findings.map((f) => el("li", { class: f.severity }, el("strong", {}, f.code), el("span", { class: "msg" }, f.message))))
    : el("p", { class: "muted" }, d.live ? "Findings come when the exchange ends." : "No findings.");
  const view = $("detail-view");
  view.replaceChildren(
    head,
    facts,
    el("h2", {}, "Findings"),
    findings,
    el("h2", {}, "Timeline"),
    timeline(d.timeline),
    tabs(d),
    el("h2", {}, "Take away"),
    actions,
    commands,
  );
}

// -- timeline chart -----------------------------------------------------------------------------

function timeline(t) {
  const width = Math.max(600, $("detail-view").clientWidth - 56), height = 190, left = 78, right = 12, top = 44;
  const lanes = { req: top, res: top + 44 };
  const laneHeight = { req: 26, res: 58 };
  const times = t.chunks.map((c) => c[1]).concat(t.heads_ns, [t.duration_ns || 0]);
  const end = Math.max(1, ...times);
  const x = (ns) => left + ((width - left - right) * ns) / end;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "timeline of chunk arrivals" });
  root.append(svg("text", { x: 4, y: lanes.req + laneHeight.req / 2 + 4, class: "lane" }, "request"));
  root.append(svg("text", { x: 4, y: lanes.res + laneHeight.res / 2 + 4, class: "lane" }, "response"));
  for (const lane of ["req", "res"]) root.append(svg("line", { x1: left, x2: width - right, y1: lanes[lane] + laneHeight[lane] / 2, y2: lanes[lane] + laneHeight[lane] / 2, class: "axis" }));
  for (const gap of t.gaps.filter((g) => g.stall || g.notable)) {
    const cls = gap.stall ? "stall" : "gap";
    const rect = svg("rect", { x: x(gap.from_ns), y: lanes.res - 4, width: Math.max(1, x(gap.to_ns) - x(gap.from_ns)), height: laneHeight.res + 8, class: cls });
    rect.append(svg("title", {}, `${gap.stall ? "stall" : "gap"}: ${ms((gap.to_ns - gap.from_ns) / 1e6)} after chunk ${gap.after}`));
    root.append(rect);
  }
  const maxBytes = Math.max(1, ...t.chunks.map((c) => c[2]));
  t.chunks.forEach(([dir, ns, size], i) => {
    const lane = dir === 0 ? "req" : "res";
    const h = Math.max(3, (laneHeight[lane] * Math.log1p(size)) / Math.log1p(maxBytes));
    const y = lanes[lane] + laneHeight[lane] / 2 - h / 2;
    const bar = svg("rect", { x: x(ns) - 1, y, width: 2.5, height: h, class: lane, "data-chunk": i });
    bar.append(svg("title", {}, `#${i + 1} ${lane === "req" ? "request" : "response"} ${bytes(size)} at ${ms(ns / 1e6)}`));
    root.append(bar);
  });
  const marks = [];
  if (t.ttfb_ns !== null) marks.push(["ttfb", t.ttfb_ns, "head " + ms(t.ttfb_ns / 1e6)]);
  if (t.ttft_ns !== null) marks.push(["ttft", t.ttft_ns, "TTFT " + ms(t.ttft_ns / 1e6)]);
  if (t.duration_ns !== null) marks.push(["end", t.duration_ns, "end " + ms(t.duration_ns / 1e6)]);
  marks.forEach(([cls, ns, label], i) => {
    const y = 12 + i * 13;
    root.append(svg("line", { x1: x(ns), x2: x(ns), y1: y + 3, y2: height - 20, class: "mark " + cls }));
    const anchor = x(ns) > width - 140 ? "end" : "start";
    root.append(svg("text", { x: x(ns) + (anchor === "end" ? -4 : 4), y, "text-anchor": anchor, class: "marklabel " + cls }, label));
  });
  for (let i = 0; i <= 5; i++) {
    const ns = (end * i) / 5;
    root.append(svg("text", { x: x(ns), y: height - 6, "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle", class: "tick" }, ms(ns / 1e6)));
  }
  const stalls = t.gaps.filter((g) => g.stall).length;
  const legend = el(
    "div",
    { class: "legend" },
    `${num(t.chunk_count)} body reads` +
      (t.chunks.length < t.chunk_count ? ` (the first and last ${num(t.chunks.length / 2)} drawn)` : "") +
      (t.gaps.some((g) => g.notable && !g.stall) ? " · shaded: gaps between response reads over twice the usual" : "") +
      (stalls ? ` · ${stalls} stall${stalls > 1 ? "s" : ""} over ${ms(t.stall_ns / 1e6)} (red)` : ""),
  );
  return el("div", { class: "timeline", id: "timeline" }, root, legend);
}

// -- tabs: conversation, answer, bodies, heads, raw ---------------------------------------------

function partElement(part) {
  const kind = part.kind === "text" ? null : el("span", { class: "kind" }, part.kind.replace("_", " ") + (part.name ? `: ${part.name}` : "") + (part.id ? ` (${part.id})` : ""));
  let body = part.text;
  if (part.kind === "tool_call") body = part.parsed !== null && part.parsed !== undefined ? JSON.stringify(part.parsed, null, 2) : `${part.arguments}\n(not JSON: ${part.error || "?"})`;
  return el("div", { class: "part " + part.kind }, kind, body);
}

function conversationPanel(d) {
  const messages = d.request.conversation;
  if (!messages.length) return el("p", { class: "muted" }, "The request has no messages (see Request body).");
  return el("div", {}, ...messages.map((m) => el("div", { class: "msg-block " + m.role }, el("div", { class: "role" }, m.role), ...m.parts.map(partElement))));
}

function answerPanel(d) {
  const a = d.answer;
  if (!a) return el("p", { class: "muted" }, "Not an LLM call wirecap knows: see Response body.");
  const parts = [];
  if (a.thinking) parts.push(el("div", { class: "part thinking" }, el("span", { class: "kind" }, "thinking"), a.thinking));
  parts.push(el("div", { class: "part" }, el("span", { class: "kind" }, "text"), a.text || "(no text)"));
  for (const call of a.tool_calls) {
    parts.push(partElement({ kind: "tool_call", name: call.name, id: call.id, arguments: call.arguments, parsed: call.parsed, error: call.error }));
  }
  const tail = [
    `finish reason: ${a.finish_reason || "-"}`,
    a.usage ? `usage: input ${num(a.usage.input)}, output ${num(a.usage.output)}, cached ${num(a.usage.cached)}, total ${num(a.usage.total)}` : "usage: -",
    `${a.api}${a.streamed ? `, streamed: ${num(a.events)} events` : ""}`,
  ];
  if (a.terminated === false) tail.push("the stream ended without its terminator");
  if (a.api_error) tail.push("error: " + JSON.stringify(a.api_error));
  parts.push(el("div", { class: "part" }, el("span", { class: "kind" }, "end"), tail.join("\n")));
  return el("div", { class: "msg-block assistant" }, el("div", { class: "role" }, "answer" + (d.live ? " so far" : "")), ...parts);
}

function bodyPanel(body, side) {
  if (body.binary) return el("p", { class: "muted" }, `Binary, ${bytes(body.size)}: see Raw, or download the raw ${side}.`);
  if (!body.size) return el("p", { class: "muted" }, "(empty)");
  return el("div", {}, el("p", { class: "muted" }, `${bytes(body.size)} ${body.content_type}${body.cut ? " (the first MiB shown)" : ""}`), el("pre", { class: "mono body" }, body.text));
}

function headsPanel(d) {
  return el("div", {}, ...d.heads.flatMap((h) => [el("h2", {}, h.label), el("pre", { class: "mono nowrap" }, h.text.replace(/\r\n/g, "\n"))]));
}

function rawPanel(d) {
  const sides = ["request", "upstream", "response"].filter((s) => d.raw[s]);
  if (!d.raw[state.rawSide]) state.rawSide = "response";
  const view = d.raw[state.rawSide];
  const pick = el("select", { "aria-label": "Which bytes" }, ...sides.map((s) => el("option", { value: s }, s === "upstream" ? "request as sent upstream" : s)));
  pick.value = state.rawSide;
  pick.addEventListener("change", () => {
    state.rawSide = pick.value;
    showTab("raw");
  });
  const mode = el("select", { "aria-label": "Shown as" }, el("option", { value: "text" }, "text with escapes"), el("option", { value: "hex" }, "hex"));
  mode.value = state.rawMode;
  mode.addEventListener("change", () => {
    state.rawMode = mode.value;
    showTab("raw");
  });
  const cut = state.rawMode === "hex" ? view.hex_cut : view.text_cut;
  return el(
    "div",
    {},
    el("div", { class: "raw-controls" }, pick, mode, el("span", { class: "muted" }, `${bytes(view.size)}${cut ? ", the start shown: download for all" : ""}`), download(d.id, "raw/" + state.rawSide, "Download")),
    el("pre", { class: "mono raw nowrap", id: "raw-bytes" }, state.rawMode === "hex" ? view.hex : view.text),
  );
}

const TABS = [
  ["conversation", "Conversation", conversationPanel],
  ["answer", "Answer", answerPanel],
  ["request", "Request body", (d) => bodyPanel(d.request, "request")],
  ["response", "Response body", (d) => bodyPanel(d.response, "response")],
  ["heads", "Heads", headsPanel],
  ["raw", "Raw bytes", rawPanel],
];

function tabs(d) {
  const bar = el("div", { class: "tabs", role: "tablist" }, ...TABS.map(([key, label]) => el("button", { type: "button", role: "tab", "data-tab": key, "aria-selected": key === state.tab ? "true" : "false", onclick: () => showTab(key) }, label)));
  const panel = el("div", { class: "panel", id: "panel", role: "tabpanel" });
  const wrap = el("div", { id: "tabs" }, bar, panel);
  fillPanel(panel, d);
  return wrap;
}

function fillPanel(panel, d) {
  const [, , render] = TABS.find(([key]) => key === state.tab) || TABS[0];
  panel.replaceChildren(render(d));
}

function showTab(key) {
  state.tab = key;
  for (const button of document.querySelectorAll(".tabs button")) button.setAttribute("aria-selected", button.dataset.tab === key ? "true" : "false");
  if (state.detail) fillPanel($("panel"), state.detail);
}

// -- keyboard -----------------------------------------------------------------------------------

function neighbour(step) {
  const index = state.rows.findIndex((r) => r.id === state.detailId);
  const next = state.rows[index + step];
  if (index >= 0 && next) {
    state.selected = index + step;
    go(next.id);
  }
}

function onKey(event) {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (event.key === "Escape") {
    if (typing) document.activeElement.blur();
    else if (state.detailId !== null) location.hash = lastListHash;
    return;
  }
  if (typing || event.metaKey || event.ctrlKey || event.altKey) return;
  const inDetail = state.detailId !== null;
  switch (event.key) {
    case "j":
    case "ArrowDown":
      if (inDetail) neighbour(1);
      else select(state.selected + 1);
      break;
    case "k":
    case "ArrowUp":
      if (inDetail) neighbour(-1);
      else select(state.selected - 1);
      break;
    case "Enter":
      if (!inDetail && state.rows[state.selected]) go(state.rows[state.selected].id);
      break;
    case "/":
      if (inDetail) location.hash = lastListHash;
      $("q").focus();
      break;
    case "[":
      if (!inDetail) page(-1);
      break;
    case "]":
      if (!inDetail) page(1);
      break;
    case "t":
      toggleTheme();
      break;
    default:
      return;
  }
  event.preventDefault();
}

// -- start --------------------------------------------------------------------------------------

function start() {
  applyTheme(initialTheme());
  $("theme").addEventListener("click", toggleTheme);
  $("filters").addEventListener("input", onFilterInput);
  $("filters").addEventListener("change", onFilterInput);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("clear").addEventListener("click", () => {
    for (const key of FILTERS) $(key).value = "";
    setQuery(Object.fromEntries(FILTERS.map((k) => [k, ""])));
  });
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  for (const th of document.querySelectorAll("#list th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      const current = state.query.sort || "time";
      const dir = key === current && (state.query.dir || "desc") === "desc" ? "asc" : "desc";
      setQuery({ sort: key, dir });
    });
  }
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  route();
  loadSummary();
  watch();
}

document.addEventListener("DOMContentLoaded", start);
