// inspectq dashboard: one ES module, no build step. Everything shown is built with
// textContent (never innerHTML with data); images are fetched with the key and shown as
// blob URLs (the CSP allows img-src 'self' blob: data:).

const KEY = "inspectq.key";
const REFRESH_MS = 10000;
const PAGE_SIZE = 48; // thumbnails per page of the line view
const WINDOWS = { "1h": 3600e3, "8h": 8 * 3600e3, "24h": 24 * 3600e3 };
const WINDOW_LABELS = { "1h": "last hour", "8h": "last 8 hours", "24h": "last 24 hours" };
const BUCKET_OF = { "1h": "minute", "8h": "hour", "24h": "hour" };

const $ = (id) => document.getElementById(id);

// --- DOM ------------------------------------------------------------------------------

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

const badge = (decision, big = false) =>
  el("span", { class: `badge ${decision || "failed"}${big ? " big" : ""}`,
               text: decision || "failed" });
const pct = (rate) => (rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`);
const num = (value, digits = 3) =>
  (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const isoAgo = (ms) => new Date(Date.now() - ms).toISOString();

// --- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

class SignedOut extends Error {}

/** fetch() with the key; a 401 signs out with a message; other errors raise ApiError. */
async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new SignedOut("not signed in");
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${key}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    signOut("Your API key was not accepted. Sign in again.");
    throw new SignedOut("401");
  }
  if (!response.ok) {
    let code = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.message;
    } catch { /* not a JSON error */ }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

const query = (params) => {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  return search.toString();
};

// --- views: lifetime of timers, listeners and blob URLs --------------------------------

let current = null; // { timers: [], listeners: [], blobs: [], alive: true }

function startView() {
  if (current) {
    current.alive = false;
    current.timers.forEach(clearInterval);
    current.listeners.forEach(([target, type, fn]) => target.removeEventListener(type, fn));
    current.blobs.forEach((url) => URL.revokeObjectURL(url));
  }
  current = { timers: [], listeners: [], blobs: [], alive: true };
  return current;
}

function listen(view, target, type, fn) {
  target.addEventListener(type, fn);
  view.listeners.push([target, type, fn]);
}

/** An <img> whose picture is fetched with the key (a blob URL owned by ``view``). */
function authImage(view, path, alt, onLoaded) {
  const img = el("img", { alt });
  api(path).then((response) => response.blob()).then((blob) => {
    if (!view.alive) return;
    const url = URL.createObjectURL(blob);
    view.blobs.push(url);
    img.src = url;
    if (onLoaded) img.addEventListener("load", () => onLoaded(img), { once: true });
  }).catch((error) => {
    if (error instanceof SignedOut) return;
    img.alt = `${alt} (not available: ${error.message})`;
  });
  return img;
}

function showError(where, error) {
  if (error instanceof SignedOut) return;
  where.replaceChildren(el("p", { class: "error", role: "alert", text: error.message }));
}

// --- sign in / out --------------------------------------------------------------------

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  startView();
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  $("api-key").value = "";
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("sign-in-error").textContent = "";
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  try {
    await apiJson("/v1/lines"); // checks the key
  } catch (error) {
    if (!(error instanceof SignedOut)) signOut(`Could not sign in: ${error.message}`);
    return;
  }
  if (!location.hash || location.hash === "#/sign-in") location.hash = "#/lines";
  route();
}

// --- router ---------------------------------------------------------------------------

function route() {
  if (!sessionStorage.getItem(KEY)) {
    signOut($("sign-in-error").textContent);
    return;
  }
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const view = startView();
  const root = $("view");
  root.replaceChildren();
  const name = parts[0] || "lines";
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "line" && parts[1]) lineView(view, root, parts[1], params);
  else if (name === "job" && parts[1]) jobView(view, root, parts[1]);
  else if (name === "review") reviewView(view, root);
  else if (name === "try") tryView(view, root);
  else if (name === "model") modelView(view, root);
  else linesView(view, root, params);
}

// --- lines overview -------------------------------------------------------------------

function windowSelect(value, onChange) {
  const select = el("select", { id: "window", onchange: () => onChange(select.value) });
  for (const [key, label] of Object.entries(WINDOW_LABELS)) {
    select.append(el("option", { value: key, selected: key === value, text: label }));
  }
  return select;
}

function linesView(view, root, params) {
  const windowKey = WINDOWS[params.get("window")] ? params.get("window") : "1h";
  const stamp = el("span", { class: "muted", id: "updated" });
  const grid = el("div", { class: "grid", id: "lines" });
  root.append(
    el("h1", { text: "Lines" }),
    el("div", { class: "toolbar" },
      el("label", { for: "window", text: "Window" }),
      windowSelect(windowKey, (key) => { location.hash = `#/lines?window=${key}`; }),
      el("button", { type: "button", onclick: () => refresh(), text: "Refresh now" }),
      stamp),
    grid,
  );

  async function refresh() {
    const since = isoAgo(WINDOWS[windowKey]);
    try {
      const { lines } = await apiJson(`/v1/lines?${query({ since })}`);
      const cards = await Promise.all(lines.map(async (line) => {
        const name = encodeURIComponent(line.name);
        // The monitor and the alerts are extras: the counts show without them (e.g. while
        // the alert history's database is unavailable).
        const [stats, health, alerts] = await Promise.all([
          apiJson(`/v1/lines/${name}/stats?${query({ since, bucket: BUCKET_OF[windowKey] })}`),
          apiJson(`/v1/lines/${name}/health`).catch(optional),
          apiJson(`/v1/alerts?${query({ line: line.name, limit: 100 })}`).catch(optional)]);
        return lineCard(line, stats, health, alerts ? alerts.alerts : null, windowKey);
      }));
      if (!view.alive) return;
      const shown = cards.filter(Boolean);
      if (shown.length === 0) {
        grid.replaceChildren(el("p", { class: "muted",
          text: `No inspected images in the ${WINDOW_LABELS[windowKey]}.` }));
      } else {
        grid.replaceChildren(...shown);
      }
      stamp.textContent = `Updated ${new Date().toLocaleTimeString()} · every 10 s`;
    } catch (error) {
      if (view.alive) showError(grid, error);
    }
  }
  refresh();
  view.timers.push(setInterval(refresh, REFRESH_MS));
}

/** A failed request for something a view can do without (a 401 still signs out). */
function optional(error) {
  if (error instanceof SignedOut) throw error;
  return null;
}

function lineCard(line, stats, health, alerts, windowKey) {
  const totals = stats.totals;
  if (totals.total === 0) return null;
  const href = `#/line/${encodeURIComponent(line.name)}?window=${windowKey}`;
  const monitor = health ? health.streams.find((s) => s.rate_kind === "reject") : null;
  const open = (alerts || []).filter((a) => a.state !== "resolved");
  return el("article", { class: "card line-card", "data-line": line.name },
    el("h2", {}, el("a", { href, text: line.name })),
    el("div", { class: "muted", text: `Cameras: ${line.cameras.join(", ") || "–"}` }),
    el("div", { class: "muted", text: `Last image: ${when(line.last_seen)}` }),
    el("div", { class: "counts" },
      ...["total", "PASS", "REVIEW", "REJECT"].map((name) =>
        el("div", { "data-count": name }, el("b", { text: totals[name] }), name))),
    el("div", { class: "rates" },
      el("span", { "data-rate": "review" }, "REVIEW ", el("b", { text: pct(totals.review_rate) })),
      el("span", { "data-rate": "reject" }, "REJECT ", el("b", { text: pct(totals.reject_rate) })),
      el("span", { "data-rate": "ipm" }, el("b", { text: totals.images_per_min.toFixed(2) }),
        " images/min"),
      totals.failed ? el("span", { text: `${totals.failed} failed` }) : null),
    rateChart(stats, monitor, (alerts || []).filter((a) => a.rate_kind === "reject")),
    monitorLegend(monitor),
    alerts === null ? el("p", { class: "muted", text: "Alerts: not available." })
      : el("div", { class: "alerts", "data-open-alerts": open.length },
        el("h3", { text: open.length ? `Open alerts (${open.length})` : "No open alerts" }),
        open.length ? el("ul", {}, ...open.map(alertItem)) : null),
  );
}

/** What the chart's two lines are, and where the REJECT monitor stands now. */
function monitorLegend(monitor) {
  if (!monitor) {
    return el("p", { class: "legend muted", text: "The REJECT rate is not monitored." });
  }
  return el("p", { class: "legend" },
    el("span", { class: "key baseline", text: `baseline ${pct(monitor.baseline)}` }),
    el("span", { class: "key limit",
                 text: `control limit ${pct(monitor.limit)} over ${monitor.window} images` }),
    el("span", { class: "key alert", text: "alert" }),
    el("span", { class: "muted", "data-monitor": "now", text: monitor.learning
      ? `learning: ${monitor.images} of ${monitor.warmup_images} images (baseline is the prior)`
      : `now ${pct(monitor.window_rate)} over the last ${monitor.window_images} images` }));
}

function alertItem(alert) {
  const where = alert.camera ? ` camera ${alert.camera}` : "";
  const test = alert.test === "spike" ? "spike" : "sustained rise";
  const ack = alert.acknowledged_at
    ? ` · acknowledged${alert.acknowledged_by ? ` by ${alert.acknowledged_by}` : ""}` : "";
  return el("li", { "data-alert": alert.id },
    el("b", { text: `${alert.rate_kind.toUpperCase()} rate ${test}${where}` }),
    ` since ${when(alert.opened_at)}: ${pct(alert.rate)} over ${alert.window} images `
    + `(limit ${pct(alert.limit)}, baseline ${pct(alert.baseline)})${ack}`);
}

const BUCKET_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };

/** The REJECT rate per bucket as an inline SVG bar chart over the window, with the
 * monitor's baseline and control limit as horizontal lines and each alert as a band from
 * its opening to its resolution (or now); empty buckets draw nothing. */
function rateChart(stats, monitor, alerts) {
  const width = 300;
  const height = 100;
  const pad = { left: 40, right: 6, top: 8, bottom: 16 };
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`,
                             role: "img", preserveAspectRatio: "none" });
  const points = stats.buckets.filter((b) => b.reject_rate !== null);
  const title = svg("title");
  title.textContent = `REJECT rate per ${stats.bucket}: ${points.map((b) =>
    `${new Date(b.start).toLocaleTimeString()} ${pct(b.reject_rate)}`).join(", ")
    || "no decided images"}`;
  chart.append(title);
  const since = Date.parse(stats.since);
  const until = Date.parse(stats.until);
  const span = Math.max(1, until - since);
  const plotWidth = width - pad.left - pad.right;
  const levels = monitor ? [monitor.baseline, monitor.limit] : [];
  const top = Math.min(1, Math.max(0.05, ...points.map((b) => b.reject_rate), ...levels) * 1.1);
  const x = (t) => pad.left + (Math.min(Math.max(t, since), until) - since) / span * plotWidth;
  const y = (r) => height - pad.bottom - (Math.min(r, top) / top) * (height - pad.top - pad.bottom);
  for (const alert of alerts) {
    const opened = Date.parse(alert.opened_at);
    const ended = alert.resolved_at ? Date.parse(alert.resolved_at) : until;
    if (ended < since || opened > until) continue;
    const band = svg("rect", { class: "alert-mark", x: x(opened).toFixed(1), y: pad.top,
      width: Math.max(2, x(ended) - x(opened)).toFixed(1), height: y(0) - pad.top });
    const tip = svg("title");
    tip.textContent = `Alert (${alert.test}) ${when(alert.opened_at)} to ${
      alert.resolved_at ? when(alert.resolved_at) : "now"}: ${pct(alert.rate)} over ${
      alert.window} images`;
    band.append(tip);
    chart.append(band);
  }
  const barWidth = Math.max(2, (BUCKET_MS[stats.bucket] / span) * plotWidth - 1);
  for (const b of points) {
    const left = Math.min(x(Date.parse(b.start)), width - pad.right - barWidth);
    const bar = svg("rect", { class: "bar", x: left.toFixed(1), y: y(b.reject_rate).toFixed(1),
      width: barWidth.toFixed(1), height: Math.max(1, y(0) - y(b.reject_rate)).toFixed(1) });
    const tip = svg("title");
    tip.textContent = `${new Date(b.start).toLocaleString()}: ${pct(b.reject_rate)} of ${
      b.total}`;
    bar.append(tip);
    chart.append(bar);
  }
  if (monitor) {
    for (const [name, rate] of [["baseline", monitor.baseline], ["limit", monitor.limit]]) {
      const level = svg("line", { class: name, x1: pad.left, x2: width - pad.right,
                                  y1: y(rate).toFixed(1), y2: y(rate).toFixed(1) });
      const tip = svg("title");
      tip.textContent = `${name} ${pct(rate)}`;
      level.append(tip);
      chart.append(level);
    }
  }
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right,
                             y1: y(0), y2: y(0) }));
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left, y1: pad.top, y2: y(0) }));
  for (const [r, label] of [[0, "0%"], [top, pct(top)]]) {
    const text = svg("text", { x: 2, y: y(r) + 3 });
    text.textContent = label;
    chart.append(text);
  }
  const axisLabel = svg("text", { x: pad.left, y: height - 3 });
  axisLabel.textContent = `REJECT rate per ${stats.bucket}, ${
    new Date(since).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })} to now`;
  chart.append(axisLabel);
  return chart;
}

// --- line view ------------------------------------------------------------------------

function lineView(view, root, line, params) {
  const windowKey = WINDOWS[params.get("window")] ? params.get("window") : "24h";
  const decision = params.get("decision") || "REJECT,REVIEW";
  const camera = params.get("camera") || "";
  const go = (changes) => {
    const next = { window: windowKey, decision, camera, ...changes };
    location.hash = `#/line/${encodeURIComponent(line)}?${query(next)}`;
  };
  const decisionSelect = el("select", { id: "decision", onchange: () => go({
    decision: decisionSelect.value }) });
  for (const [value, label] of [["REJECT,REVIEW", "REJECT and REVIEW"], ["REJECT", "REJECT"],
    ["REVIEW", "REVIEW"], ["PASS", "PASS"]]) {
    decisionSelect.append(el("option", { value, selected: value === decision, text: label }));
  }
  const cameraSelect = el("select", { id: "camera", onchange: () => go({
    camera: cameraSelect.value }) }, el("option", { value: "", text: "all cameras" }));
  if (camera) cameraSelect.append(el("option", { value: camera, selected: true, text: camera }));
  apiJson("/v1/lines").then(({ lines }) => {
    const found = lines.find((l) => l.name === line);
    if (!view.alive || !found) return;
    for (const name of found.cameras.filter((c) => c !== camera)) {
      cameraSelect.append(el("option", { value: name, text: name }));
    }
  }).catch(() => { /* the filter keeps "all cameras" */ });
  const status = el("p", { class: "muted", id: "export-status" });
  const thumbs = el("div", { class: "thumbs", id: "thumbs" });
  root.append(
    el("h1", {}, "Line ", el("span", { text: line })),
    el("div", { class: "toolbar" },
      el("label", { for: "decision", text: "Decision" }), decisionSelect,
      el("label", { for: "camera", text: "Camera" }), cameraSelect,
      el("label", { for: "window", text: "Window" }),
      windowSelect(windowKey, (key) => go({ window: key })),
      el("button", { type: "button", id: "export", onclick: () => exportCsv(), text:
        "Export CSV" })),
    status, thumbs);

  const since = isoAgo(WINDOWS[windowKey]);
  const decisions = decision.split(",");

  async function exportCsv() {
    status.textContent = "Exporting…";
    try {
      const parts = await Promise.all(decisions.map((d) =>
        api(`/v1/exports?${query({ format: "csv", line, camera, decision: d, since })}`)
          .then((r) => r.text())));
      // One header, then every decision's rows.
      const [header, ...first] = parts[0].split(/\r?\n/);
      const rows = [header, ...first.filter(Boolean)];
      for (const text of parts.slice(1)) rows.push(...text.split(/\r?\n/).slice(1).filter(Boolean));
      const url = URL.createObjectURL(new Blob([`${rows.join("\r\n")}\r\n`],
                                               { type: "text/csv" }));
      view.blobs.push(url);
      const name = `inspectq-${line}${camera ? `-${camera}` : ""}-${decisions.join("+")}-${
        windowKey}.csv`;
      const link = el("a", { href: url, download: name });
      document.body.append(link);
      link.click();
      link.remove();
      status.textContent = `Exported ${rows.length - 1} rows to ${name}.`;
    } catch (error) {
      showError(status, error);
    }
  }

  // One keyset-paged listing per decision, merged newest first (the API's order: created_at,
  // then id); each listing fetches its next page only when the merge needs it.
  const listings = decisions.map((d) => ({ decision: d, jobs: [], cursor: null, ended: false }));
  const newest = (a, b) => (`${a.jobs[0].created_at} ${a.jobs[0].id}` >= `${
    b.jobs[0].created_at} ${b.jobs[0].id}` ? a : b);
  async function fetchPage(listing) {
    const page = await apiJson(`/v1/jobs?${query({ line, camera, decision: listing.decision,
      since, limit: PAGE_SIZE, cursor: listing.cursor })}`);
    listing.jobs.push(...page.jobs);
    listing.cursor = page.next_cursor;
    listing.ended = !page.next_cursor;
  }
  async function nextJobs() {
    const out = [];
    while (out.length < PAGE_SIZE) {
      await Promise.all(listings.filter((l) => l.jobs.length === 0 && !l.ended).map(fetchPage));
      const waiting = listings.filter((l) => l.jobs.length > 0);
      if (waiting.length === 0) break;
      out.push(waiting.reduce(newest).jobs.shift());
    }
    return out;
  }
  const more = el("button", { type: "button", id: "load-more", hidden: true,
                              onclick: () => showMore(), text: "Load more" });
  root.append(more);
  let shown = 0;

  async function showMore() {
    more.disabled = true;
    try {
      const jobs = await nextJobs();
      if (!view.alive) return;
      if (shown === 0) {
        thumbs.replaceChildren(...(jobs.length ? [] : [el("p", { class: "muted",
                                                                 text: "No matching images." })]));
      }
      thumbs.append(...jobs.map((job) => thumb(view, job)));
      shown += jobs.length;
      more.hidden = listings.every((l) => l.ended && l.jobs.length === 0);
      more.textContent = `Load more (${shown} shown)`;
    } catch (error) {
      if (view.alive) showError(status, error);
    } finally {
      more.disabled = false;
    }
  }
  showMore();
}

function thumb(view, job) {
  return el("a",
    { class: "thumb", href: `#/job/${encodeURIComponent(job.id)}`, "data-job": job.id },
    job.status === "done"
      ? authImage(view, `/v1/jobs/${encodeURIComponent(job.id)}/overlay`, `Overlay of ${job.id}`)
      : el("div", { class: "muted", text: "failed" }),
    el("div", { class: "meta" }, badge(job.decision),
      el("span", { text: `score ${num(job.score, 2)}` }),
      el("span", { text: job.camera || "" })),
    el("div", { class: "meta muted" }, el("span", { text: when(job.created_at) })));
}

// --- review queue ---------------------------------------------------------------------

function reviewView(view, root) {
  const stage = el("div", { id: "review-item" });
  const done = el("span", { class: "muted", id: "review-progress" });
  const note = el("input", { id: "review-note", type: "text", maxlength: 2000,
                             placeholder: "optional note" });
  root.append(
    el("h1", { text: "Review queue" }),
    el("p", { class: "muted" },
      "REVIEW images nobody has answered yet, newest first. Keys: ", el("kbd", { text: "P" }),
      " it is a PASS, ", el("kbd", { text: "R" }), " it is a REJECT, ",
      el("kbd", { text: "1" }), "-", el("kbd", { text: "9" }),
      " it is a REJECT of that class, ", el("kbd", { text: "S" }),
      " skip. Each answer is sent as feedback."),
    el("div", { class: "toolbar" }, el("label", { for: "review-note", text: "Note" }), note,
       done),
    stage);

  let queue = [];
  let item = null;
  let answered = 0;
  let busy = false;
  let cursor = null; // keyset cursor of the next page of the listing; null: no more
  let detail = null; // the shown item's result (classes and regions), once read
  const classKeys = el("div", { class: "keys", id: "review-classes" });
  const skipped = new Set();

  async function load() {
    try {
      const page = await apiJson(`/v1/jobs?${query({ decision: "REVIEW", feedback: "none",
                                                    limit: 50, cursor })}`);
      cursor = page.next_cursor || null;
      queue.push(...page.jobs.filter((job) => !skipped.has(job.id)));
      next();
    } catch (error) {
      if (view.alive) showError(stage, error);
    }
  }

  function next() {
    if (!view.alive) return;
    item = queue.shift() || null;
    detail = null;
    classKeys.replaceChildren();
    if (!item && cursor) { // this page is worked off (or skipped): fetch the next one
      load();
      return;
    }
    done.textContent = `${answered} answered · ${queue.length + (item ? 1 : 0)}${
      cursor ? "+" : ""} waiting`;
    if (!item) {
      stage.replaceChildren(el("p", { class: "muted", id: "review-empty",
        text: "Nothing to review. Well done." }));
      return;
    }
    const href = `#/job/${encodeURIComponent(item.id)}`;
    stage.replaceChildren(el("div", { class: "cols", "data-job": item.id },
      el("div", { class: "big-image" }, authImage(view,
        `/v1/jobs/${encodeURIComponent(item.id)}/overlay`, `Overlay of ${item.id}`)),
      el("div", { class: "panel stack" },
        el("div", {}, badge(item.decision, true), " ",
           el("span", { text: `score ${num(item.score)}` })),
        facts([
          ["Job", el("a", { href, text: item.id })],
          ["Line", item.line], ["Camera", item.camera || "–"],
          ["Thresholds", `pass ${num(item.thresholds.pass, 2)} · reject ${
            num(item.thresholds.reject, 2)}`],
          ["Defects", Object.entries(item.defects).map(([k, v]) => `${k} ×${v}`).join(", ")
            || "none"],
          ["Model", item.model_version || "–"], ["Taken", when(item.created_at)],
        ]),
        el("div", { class: "keys" },
          el("button", { type: "button", class: "primary", onclick: () => answer("PASS") },
             el("kbd", { text: "P" }), " PASS"),
          el("button", { type: "button", class: "primary", onclick: () => answer("REJECT") },
             el("kbd", { text: "R" }), " REJECT"),
          el("button", { type: "button", onclick: () => skip() }, el("kbd", { text: "S" }),
             " Skip")),
        classKeys,
        el("p", { class: "error", role: "alert", id: "review-error" }))));
    stage.querySelector("button").focus();
    // The class keys need the job's classes and regions: one read of the job per item.
    const shown = item;
    apiJson(`/v1/jobs/${encodeURIComponent(shown.id)}`).then((job) => {
      if (!view.alive || item !== shown || !job.result) return;
      detail = job.result;
      classKeys.replaceChildren(...detail.model.classes.slice(1, 10).map((name, index) =>
        el("button", { type: "button", "data-class": name, onclick: () => relabel(index + 1) },
           el("kbd", { text: String(index + 1) }), ` REJECT as ${name}`)));
    }).catch(() => {}); // the P / R / S keys work without it
  }

  /** REJECT with the defects relabelled as class ``classes[index]``: the model's regions
   * keep their boxes; with none, the whole image is the defect. */
  function relabel(index) {
    if (!detail || index >= detail.model.classes.length) return;
    const name = detail.model.classes[index];
    const boxes = detail.defects.length ? detail.defects.map((defect) => defect.bbox)
      : [[0, 0, detail.width, detail.height]];
    send({ verdict: "correct", defects: boxes.map((bbox) => ({ class: name, bbox })),
           by: "dashboard" });
  }

  function answer(decision) {
    send({ verdict: "correct", decision, by: "dashboard" });
  }

  async function send(body) {
    if (!item || busy) return;
    busy = true;
    if (note.value.trim()) body.note = note.value.trim();
    try {
      await api(`/v1/jobs/${encodeURIComponent(item.id)}/feedback`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body) });
      answered += 1;
      note.value = "";
      if (queue.length === 0) await load();
      else next();
    } catch (error) {
      const where = $("review-error");
      if (where) showError(where, error);
    } finally {
      busy = false;
    }
  }

  function skip() {
    if (!item) return;
    skipped.add(item.id);
    next();
  }

  listen(view, document, "keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement
        || event.target instanceof HTMLTextAreaElement) return;
    const key = event.key.toLowerCase();
    if (key === "p") answer("PASS");
    else if (key === "r") answer("REJECT");
    else if (key === "s") skip();
    else if (/^[1-9]$/.test(key)) relabel(Number(key));
    else return;
    event.preventDefault();
  });
  load();
}

function facts(pairs) {
  return el("dl", { class: "facts" }, ...pairs.flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", {}, value)]));
}

// --- job view -------------------------------------------------------------------------

const PALETTE = [[0, 0, 0], [230, 60, 50], [255, 190, 30], [60, 140, 255], [170, 90, 230],
                 [40, 200, 140], [250, 120, 200], [140, 200, 40]];
const maskColour = (v) => (v ? PALETTE[((v - 1) % (PALETTE.length - 1)) + 1] : PALETTE[0]);

/** The heatmap's colour scale (probability 0 black, through purple, red and orange, to 1
 * pale yellow), as a table of the 256 grey levels of the stored heatmap. */
const HEAT_STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
const HEAT = Array.from({ length: 256 }, (_, v) => {
  const x = (v / 255) * (HEAT_STOPS.length - 1);
  const i = Math.min(Math.floor(x), HEAT_STOPS.length - 2);
  return HEAT_STOPS[i].map((c, k) => Math.round(c + (HEAT_STOPS[i + 1][k] - c) * (x - i)));
});
const heatColour = (v) => HEAT[v];

/** Draw grey levels 0..255 in ``colour`` (a function of the level to [r, g, b]) on
 * ``canvas``, from ``source`` (an ImageBitmap, or null for the scale: a 256 x 1 ramp). */
function paint(canvas, source, colour) {
  canvas.width = source ? source.width : 256;
  canvas.height = source ? source.height : 1;
  const context = canvas.getContext("2d");
  if (source) context.drawImage(source, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = colour(source ? data[i] : i / 4);
    data[i] = r; data[i + 1] = g; data[i + 2] = b; data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
}

/** A figure with a canvas showing the grey PNG at ``path`` (fetched with the key) in
 * colour; when the API has none, a line saying so. */
function colouredFigure(view, path, id, label, caption, colour, ...extra) {
  const canvas = el("canvas", { id, role: "img", "aria-label": label });
  const note = el("figcaption", { text: caption });
  api(path).then((response) => response.blob())
    .then((blob) => createImageBitmap(blob, { colorSpaceConversion: "none" }))
    .then((bitmap) => {
      if (!view.alive) return;
      paint(canvas, bitmap, colour);
      canvas.dataset.loaded = "true";
    }).catch((error) => {
      if (error instanceof SignedOut || !view.alive) return;
      canvas.hidden = true;
      note.textContent = `${label}: not available (${error.message})`;
    });
  return el("figure", {}, canvas, ...extra, note);
}

function heatScale() {
  const scale = el("canvas", { class: "scale", "aria-hidden": "true" });
  paint(scale, null, heatColour);
  return el("div", { class: "scale-row" }, el("span", { text: "0" }), scale,
            el("span", { text: "1" }));
}

function jobView(view, root, jobId) {
  const body = el("div", { class: "stack", id: "job" });
  root.append(el("h1", {}, "Job ", el("span", { text: jobId })), body);
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;

  async function load() {
    try {
      const job = await apiJson(path);
      if (view.alive) body.replaceChildren(...renderJob(view, job, load));
    } catch (error) {
      if (view.alive) showError(body, error);
    }
  }
  load();
}

function renderJob(view, job, reload) {
  const path = `/v1/jobs/${encodeURIComponent(job.id)}`;
  const result = job.result;
  const parts = [];
  const decision = result ? result.decision : null;
  parts.push(el("div", { class: "panel" },
    el("div", { class: "toolbar" }, result ? badge(decision, true) : badge(null, true),
      el("span", { text: `status ${job.status}` }),
      result ? el("span", { text: `score ${num(result.score)}` }) : null,
      result ? el("span", { id: "job-thresholds", text: `thresholds: pass < ${
        num(result.thresholds.pass, 2)} ≤ REVIEW ≤ ${num(result.thresholds.reject, 2)} < reject`
      }) : null),
    facts([
      ["Line", job.line], ["Camera", job.camera || "–"], ["Created", when(job.created_at)],
      ["Updated", when(job.updated_at)], ["Batch", job.batch_id || "–"],
      ["Model", result ? `${result.model.name} v${result.model.version}` : "–"],
      ["Image", result ? `${result.width} × ${result.height} px` : "–"],
      ["Quality", result ? (result.quality.issues.join(", ") || "no issues") : "–"],
      ["Out of domain", !result || result.ood_score === null || result.ood_score === undefined
        ? "not measured by this model"
        : `${result.ood_score > 1 ? "yes" : "no"} (score ${num(result.ood_score, 2)}; above 1.00 a person decides)`],
      ["Review reasons", result && result.review_reasons && result.review_reasons.length
        ? result.review_reasons.join(", ") : "–"],
      ["Cache hit", result ? String(result.cache_hit) : "–"],
      ["Metadata", job.metadata ? JSON.stringify(job.metadata) : "–"],
      ["Error", job.error ? `${job.error.code}: ${job.error.message}` : "–"],
    ])));
  if (job.status === "done") {
    parts.push(el("div", { class: "figures" },
      el("figure", {}, authImage(view, `${path}/image`, `Image of ${job.id}`),
        el("figcaption", { text: "Image: upright, as the model saw it" })),
      el("figure", {}, authImage(view, `${path}/overlay`, `Overlay of ${job.id}`),
        el("figcaption", { text: "Overlay: the image with its defect regions drawn" })),
      colouredFigure(view, `${path}/heatmap`, "heatmap-canvas",
        "Defect probability heatmap",
        "Heatmap: the model's defect probability per pixel", heatColour, heatScale()),
      colouredFigure(view, `${path}/mask`, "mask-canvas", "Defect mask",
        "Mask: defect pixels per class (background black)", maskColour)));
  }
  if (result) {
    parts.push(el("div", { class: "cols" },
      el("div", { class: "panel" }, el("h2", { text: "Regions" }),
        result.defects.length === 0 ? el("p", { class: "muted", text: "No defect regions." })
          : el("table", { id: "regions" },
            el("thead", {}, el("tr", {}, ...["Class", "Score", "Box [x0, y0, x1, y1]", "Pixels",
              "Share"].map((h) => el("th", { text: h })))),
            el("tbody", {}, ...result.defects.map((d) => el("tr", {},
              el("td", { text: d.class }), el("td", { text: num(d.score) }),
              el("td", { text: `[${d.bbox.join(", ")}]` }), el("td", { text: d.area_px }),
              el("td", { text: pct(d.area_ratio) })))))),
      el("div", { class: "panel" }, el("h2", { text: "Timings (ms)" }),
        el("table", {}, el("tbody", {}, ...timingRows(result.timings)))),
    ));
  }
  if (job.status === "done") parts.push(feedbackPanel(job, reload));
  return parts;
}

const TIMING_ORDER = ["ingest_ms", "queue_wait_ms", "s3_get_ms", "preprocess_ms", "triton_ms",
                      "postprocess_ms", "record_ms", "total_ms"];

/** The timings in pipeline order (any the dashboard does not know yet come last). */
function timingRows(timings) {
  const names = [...TIMING_ORDER.filter((k) => k in timings),
                 ...Object.keys(timings).filter((k) => !TIMING_ORDER.includes(k))];
  return names.map((k) => el("tr", {}, el("td", { text: k.replace(/_ms$/, "").replace("_", " ") }),
                              el("td", { text: num(timings[k], 1) })));
}

function feedbackPanel(job, reload) {
  const history = job.feedback ? job.feedback.history : [];
  const message = el("p", { class: "error", role: "alert" });
  const send = async (body) => {
    try {
      await api(`/v1/jobs/${encodeURIComponent(job.id)}/feedback`, { method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, by: "dashboard" }) });
      reload();
    } catch (error) {
      showError(message, error);
    }
  };
  const decision = job.result.decision;
  return el("div", { class: "panel" }, el("h2", { text: "Feedback" }),
    history.length === 0 ? el("p", { class: "muted", text: "No feedback yet." })
      : el("table", { id: "feedback" },
        el("thead", {}, el("tr", {}, ...["When", "Verdict", "Decision", "By", "Note"].map((h) =>
          el("th", { text: h })))),
        el("tbody", {}, ...history.map((f) => el("tr", {},
          el("td", { text: when(f.at) }), el("td", { text: f.verdict }),
          el("td", { text: f.decision || (f.verdict === "confirm" ? decision : "REJECT") }),
          el("td", { text: f.by || "–" }), el("td", { text: f.note || "" }))))),
    el("div", { class: "keys" },
      decision !== "REVIEW"
        ? el("button", { type: "button", onclick: () => send({ verdict: "confirm" }),
                         text: `Confirm ${decision}` }) : null,
      ...["PASS", "REVIEW", "REJECT"].filter((d) => d !== decision).map((d) =>
        el("button", { type: "button", onclick: () => send({ verdict: "correct", decision: d }),
                       text: `Correct to ${d}` }))),
    message);
}

// --- model -----------------------------------------------------------------------------

const metric = (value) => (typeof value === "number" ? value.toFixed(4) : "–");

function modelView(view, root) {
  const body = el("div", { class: "stack", id: "model" });
  root.append(el("h1", { text: "Model" }), body);
  apiJson("/v1/model").then((model) => {
    if (!view.alive) return;
    const served = model.versions.find((v) => v.served);
    const others = model.versions.filter((v) => !v.served);
    body.replaceChildren(
      servedPanel(model, served),
      el("div", { class: "panel" }, el("h2", { text: "Other installed versions" }),
        others.length === 0 ? el("p", { class: "muted", text: "None." })
          : el("table", { id: "other-versions" },
            el("thead", {}, el("tr", {}, ...["Version", "sha256", "Architecture",
              "Mean Dice", "Image AUROC", "Trained"].map((h) => el("th", { text: h })))),
            el("tbody", {}, ...others.map((v) => el("tr", { "data-version": v.version },
              el("td", { text: v.version }),
              ...(v.card ? [el("td", { text: `${v.card.sha256.slice(0, 16)}…` }),
                el("td", { text: v.card.architecture || "user model" }),
                el("td", { text: metric(v.card.metrics && v.card.metrics.mean_dice) }),
                el("td", { text: metric(v.card.metrics && v.card.metrics.image_auroc) }),
                el("td", { text: v.card.training ? v.card.training.command || "–" : "–" })]
                : [el("td", { colspan: 5, class: "muted", text: "no model card" })])))))),
      el("p", { class: "muted", text: "Triton loads the served version when it starts (or "
        + "when the model is loaded again); `inspectq model select N` chooses another." }));
  }).catch((error) => { if (view.alive) showError(body, error); });
}

function servedPanel(model, served) {
  const card = served && served.card;
  const panel = el("div", { class: "panel", id: "served" },
    el("h2", { text: `${model.name} version ${model.served_version} (served)` }));
  if (!card) {
    panel.append(el("p", { class: "muted", text: "This version has no model card." }));
    return panel;
  }
  const metrics = card.metrics || {};
  const rates = Object.entries(metrics).filter(([k]) => /^(recall_|false_alarm_)/.test(k));
  panel.append(facts([
    ["sha256", card.sha256], ["Architecture", card.architecture || "user model"],
    ["Classes", card.classes.join(", ")],
    ["Parameters", card.params ? Number(card.params).toLocaleString() : "–"],
    ["Trained", card.training ? card.training.command || "–" : "–"],
    ["Held-out images", metrics.images === undefined ? "–" : `${metrics.images} (${
      metrics.defective_images} defective, ${metrics.good_images} good)`],
    ["Image AUROC", metric(metrics.image_auroc)],
    ["Mean Dice", metric(metrics.mean_dice)],
    ...rates.map(([k, v]) => [k.replaceAll("_", " "), metric(v)]),
  ]));
  const perClass = Object.entries(metrics.per_class || {});
  panel.append(el("h3", { text: "Per class (held-out pixels)" }),
    perClass.length === 0 ? el("p", { class: "muted", text: "No per-class metrics." })
      : el("table", { id: "per-class" },
        el("thead", {}, el("tr", {}, ...["Class", "Dice", "IoU", "True pixels"].map((h) =>
          el("th", { text: h })))),
        el("tbody", {}, ...perClass.map(([name, m]) => el("tr", {},
          el("td", { text: name }), el("td", { text: metric(m.dice) }),
          el("td", { text: metric(m.iou) }),
          el("td", { text: m.pixels === undefined ? "–" : Number(m.pixels).toLocaleString() }))))));
  return panel;
}

// --- try it ---------------------------------------------------------------------------

/** inspectq.result.final_decision: PASS below pass, REJECT above reject, REVIEW from pass to
 * reject inclusive; a frame with quality issues never PASSes; an out-of-domain image (ood
 * score above 1.0) is REVIEW whatever its score. */
export function decide(score, passThreshold, rejectThreshold, qualityIssues = [],
                       oodScore = null) {
  if (oodScore !== null && oodScore !== undefined && oodScore > 1.0) return "REVIEW";
  let decision = "REVIEW";
  if (score < passThreshold) decision = "PASS";
  else if (score > rejectThreshold) decision = "REJECT";
  if (decision === "PASS" && qualityIssues.length > 0) decision = "REVIEW";
  return decision;
}

function tryView(view, root) {
  const file = el("input", { id: "try-file", type: "file", required: true,
                             accept: "image/png,image/jpeg,image/bmp,image/tiff" });
  const line = el("input", { id: "try-line", type: "text", value: "try-it", required: true,
                             pattern: "[A-Za-z0-9._\\-]{1,64}" });
  const status = el("p", { id: "try-status", class: "muted", role: "status" });
  const out = el("div", { id: "try-result" });
  const form = el("form", { class: "toolbar", onsubmit: (event) => submit(event) },
    el("label", { for: "try-file", text: "Image" }), file,
    el("label", { for: "try-line", text: "Line" }), line,
    el("button", { type: "submit", class: "primary", text: "Inspect" }));
  root.append(el("h1", { text: "Try it" }),
    el("p", { class: "muted", text: "Upload one image, watch it go through the queue, then "
      + "move the thresholds to see how the decision would change (from the stored score, "
      + "no new inference)." }), form, status, out);

  async function submit(event) {
    event.preventDefault();
    if (!file.files.length) return;
    const data = new FormData();
    data.append("image", file.files[0]);
    data.append("line", line.value);
    out.replaceChildren();
    status.textContent = "Uploading…";
    try {
      const accepted = await apiJson("/v1/jobs", { method: "POST", body: data });
      status.textContent = `Job ${accepted.id}: ${accepted.status}, waiting for a worker…`;
      status.dataset.job = accepted.id;
      let job = accepted;
      while (view.alive && !["done", "failed"].includes(job.status)) {
        job = await apiJson(`/v1/jobs/${encodeURIComponent(accepted.id)}?wait=20`);
        status.textContent = `Job ${job.id}: ${job.status}${
          job.status === "done" || job.status === "failed" ? "" : ", waiting…"}`;
      }
      if (view.alive) showTried(job);
    } catch (error) {
      showError(status, error);
    }
  }

  function showTried(job) {
    if (job.status === "failed") {
      out.replaceChildren(el("p", { class: "error", text: `Failed: ${job.error.code}: ${
        job.error.message}` }));
      return;
    }
    const result = job.result;
    const issues = result.quality.issues;
    const decisionOut = el("span", { id: "try-decision" });
    const passIn = el("input", { id: "pass-threshold", type: "range", min: 0, max: 1,
                                 step: 0.01, value: result.thresholds.pass });
    const rejectIn = el("input", { id: "reject-threshold", type: "range", min: 0, max: 1,
                                   step: 0.01, value: result.thresholds.reject });
    const passText = el("output", { for: "pass-threshold" });
    const rejectText = el("output", { for: "reject-threshold" });
    const update = (moved) => {
      let pass = Number(passIn.value);
      let reject = Number(rejectIn.value);
      if (pass > reject) { // keep pass <= reject: the other slider follows
        if (moved === passIn) { reject = pass; rejectIn.value = String(reject); }
        else { pass = reject; passIn.value = String(pass); }
      }
      passText.textContent = pass.toFixed(2);
      rejectText.textContent = reject.toFixed(2);
      const decision = decide(result.score, pass, reject, issues, result.ood_score);
      decisionOut.replaceChildren(badge(decision, true));
      decisionOut.dataset.decision = decision;
    };
    passIn.addEventListener("input", () => update(passIn));
    rejectIn.addEventListener("input", () => update(rejectIn));
    out.replaceChildren(el("div", { class: "cols" },
      el("figure", { class: "panel big-image" },
        authImage(view, `/v1/jobs/${encodeURIComponent(job.id)}/overlay`,
                  `Overlay of ${job.id}`),
        el("figcaption", {}, el("a", { href: `#/job/${encodeURIComponent(job.id)}`,
                                       text: "Open the job" }))),
      el("div", { class: "panel stack" },
        el("div", {}, "Decision with these thresholds: ", decisionOut),
        el("div", { class: "muted", text: `The model said ${result.decision} at pass ${
          num(result.thresholds.pass, 2)} / reject ${num(result.thresholds.reject, 2)}; score ${
          num(result.score)}${issues.length ? `; quality issues: ${issues.join(", ")}` : ""}${
          (result.review_reasons || []).includes("out_of_domain")
            ? "; out of domain: a person decides whatever the thresholds" : ""}.` }),
        el("div", { class: "slider" }, el("label", { for: "pass-threshold",
          text: "PASS below" }), passIn, passText),
        el("div", { class: "slider" }, el("label", { for: "reject-threshold",
          text: "REJECT above" }), rejectIn, rejectText))));
    out.querySelector("img").id = "try-overlay";
    update(null);
  }
}

// --- start ----------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
