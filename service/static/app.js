// ResCom demo page. Plain JavaScript, no dependencies: it only calls the public API of the service that
// serves it (same origin): GET /v1/models, POST /predict (JSON body), GET /v1/models/{name}/prior and
// POST /v1/models/{name}/prior/reset.

const TOKEN_KEY = "rescom.demo.token";
const POLL_MS = 2000;
// Many-shot n > 100, Few-shot n < 20 training images (rescom.metrics) unless the API reports thresholds.
const DEFAULT_SHOTS = { many: 100, few: 20 };
const SVG_NS = "http://www.w3.org/2000/svg";
// Chart margins in CSS pixels; the width follows the element (text keeps its size on a phone).
const CHART = { height: 260, left: 58, right: 12, top: 14, bottom: 46, minWidth: 300 };

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // entries of GET /v1/models
  model: null, // the entry in use
  image: null, // { dataUrl, name }
  previewUrl: null,
  seq: 0, // prediction requests started
  pollTimer: null,
  priorData: null, // the last GET /v1/models/{name}/prior answer (redrawn on resize)
  priorBusy: false,
  priorAgain: false,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --------------------------------------------------------------------------------------------------- helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function formatProb(p) {
  const text = (p * 100).toFixed(2);
  return text === "0.00" ? "< 0.01 %" : `${text} %`;
}

function formatPi(v) {
  return v >= 0.001 ? v.toFixed(4) : v.toExponential(2);
}

function providerName(provider) {
  return String(provider || "unknown").replace(/ExecutionProvider$/, "");
}

// ------------------------------------------------------------------------------------------------------- API

function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token is not kept
  }
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `could not reach the server (${err.message})`);
  }
  const text = await response.text();
  const ms = performance.now() - started;
  const data = parseJson(text);
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : text.trim().slice(0, 300);
    throw new ApiError(response.status, message || response.statusText || "request failed");
  }
  return { data, ms };
}

function describeError(err) {
  if (!(err instanceof ApiError)) return `Unexpected error: ${err.message}`;
  if (err.status === 0) return `Network error: ${err.message}`;
  const hint = err.status === 401 ? " (enter the server's API key in the Access token field)" : "";
  return `Error ${err.status}: ${err.message}${hint}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = $("error");
  box.textContent = "";
  box.hidden = true;
}

// ---------------------------------------------------------------------------------------------------- models

async function loadModels() {
  $("model").disabled = true;
  try {
    const { data } = await api("/v1/models");
    state.models = Array.isArray(data?.models) ? data.models : [];
    clearError();
  } catch (err) {
    state.models = [];
    showError(describeError(err));
  }
  fillModelSelect();
  selectModel($("model").value);
}

function fillModelSelect() {
  const select = $("model");
  const previous = state.model?.name;
  select.replaceChildren();
  for (const m of state.models) {
    const loaded = m.version !== null && m.version !== undefined;
    const option = new Option(loaded ? `${m.name} (version ${m.version})` : `${m.name} (not loaded)`, m.name);
    option.disabled = !loaded;
    select.append(option);
  }
  const ready = state.models.filter((m) => m.version !== null && m.version !== undefined);
  if (!state.models.length) select.append(new Option("no model available", ""));
  const pick = ready.find((m) => m.name === previous) || ready[0];
  if (pick) select.value = pick.name;
  select.disabled = ready.length === 0;
}

function selectModel(name) {
  const changed = state.model?.name !== name;
  state.model = state.models.find((m) => m.name === name && m.version !== null) || null;
  renderModelInfo();
  configureControls(changed);
  clearResults();
  restartPolling();
  if (state.image) predict();
}

function shotThresholds(model) {
  const t = model?.shot_thresholds;
  return t && Number.isFinite(t.many) && Number.isFinite(t.few) ? t : DEFAULT_SHOTS;
}

function shotGroup(count, thresholds) {
  if (count > thresholds.many) return "head";
  return count < thresholds.few ? "tail" : "medium";
}

function renderModelInfo() {
  const m = state.model;
  if (!m) {
    $("model-info").textContent = "";
    return;
  }
  const parts = [`${m.name} v${m.version}`, `${m.num_classes} classes`];
  if (m.method) parts.push(m.method);
  if (m.architecture?.arch) parts.push(m.architecture.arch);
  if (m.dataset) parts.push(`trained on ${m.dataset}`);
  const acc = m.accuracy;
  if (acc && Number.isFinite(acc.top1)) {
    // The served figure (calibrated, uniform prior) when the export recorded it; older exports: raw argmax.
    const how = acc.kind === "served" ? "as served" : "raw argmax";
    parts.push(`test accuracy ${acc.top1.toFixed(1)} % (${how})`);
  }
  $("model-info").textContent = parts.join(" · ");
}

function configureControls(modelChanged) {
  const m = state.model;
  const topK = $("top-k");
  const classes = m ? m.num_classes : 1;
  topK.max = String(classes);
  if (modelChanged) topK.value = String(Math.min(5, classes));
  const t = m?.temperature;
  const bias = Array.isArray(m?.class_bias) ? " and per-class bias b" : "";
  $("temperature-value").textContent = Number.isFinite(t)
    ? `(T = ${t.toFixed(3)}${bias})`
    : "(none fitted: T = 1)";
  if (m && (modelChanged || !$("custom-prior").value.trim())) {
    const uniform = Object.fromEntries(m.class_names.map((name) => [name, 1]));
    $("custom-prior").value = JSON.stringify(uniform);
  }
  const shots = shotThresholds(m);
  $("shot-legend").textContent = m
    ? `Badges by training images n: head n > ${shots.many}, medium ${shots.few} ≤ n ≤ ${shots.many}, ` +
      `tail n < ${shots.few}.`
    : "";
}

// ----------------------------------------------------------------------------------------------- image input

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

function showPreview(file, name) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const img = $("preview");
  img.alt = `Preview of ${name}`;
  img.src = state.previewUrl;
  img.hidden = false;
  $("image-name").textContent = `${name} (${file.size} bytes)`;
}

async function useFile(file) {
  if (!file) return;
  const name = file.name || "pasted image";
  try {
    state.image = { dataUrl: await readAsDataUrl(file), name };
  } catch (err) {
    showError(`Could not read ${name}: ${err.message}`);
    return;
  }
  showPreview(file, name);
  await predict();
}

function clipboardFile(data) {
  if (!data) return null;
  if (data.files && data.files.length) return data.files[0];
  for (const item of data.items || []) {
    if (item.kind === "file") return item.getAsFile();
  }
  return null;
}

// ------------------------------------------------------------------------------------------------ prediction

function priorKind() {
  return document.querySelector('input[name="prior"]:checked')?.value || "uniform";
}

function priorOption() {
  const kind = priorKind();
  return kind === "custom" ? $("custom-prior").value.trim() : kind;
}

function topK() {
  const classes = state.model ? state.model.num_classes : 1;
  const value = Number.parseInt($("top-k").value, 10);
  const k = Number.isFinite(value) ? Math.min(Math.max(value, 1), classes) : Math.min(5, classes);
  $("top-k").value = String(k);
  return k;
}

async function predict() {
  if (!state.model || !state.image) return;
  const seq = ++state.seq;
  const results = $("results");
  results.setAttribute("aria-busy", "true");
  results.dataset.started = String(seq);
  const request = {
    images: [state.image.dataUrl],
    model: state.model.name,
    top_k: topK(),
    prior: priorOption(),
    temperature: $("use-temperature").checked,
  };
  try {
    const { data, ms } = await api("/predict", { method: "POST", body: request });
    if (seq !== state.seq) return; // a newer request is on its way
    clearError();
    renderPrediction(data, ms);
    refreshPrior();
  } catch (err) {
    if (seq !== state.seq) return;
    clearResults("No prediction.");
    showError(describeError(err));
  } finally {
    if (seq === state.seq) {
      results.setAttribute("aria-busy", "false");
      results.dataset.seq = String(seq);
    }
  }
}

function clearResults(message = "Choose an image to classify it.") {
  $("bars").replaceChildren();
  $("summary").textContent = state.image ? message : "Choose an image to classify it.";
  $("timing").textContent = "";
}

function barRow(entry, count, thresholds) {
  const row = el("li", "bar-row");
  row.dataset.classId = String(entry.class_id);
  const text = el("div", "bar-text");
  text.append(el("span", "bar-label", entry.label), el("span", "bar-id", `class ${entry.class_id}`));
  if (Number.isFinite(count)) {
    const group = shotGroup(count, thresholds);
    text.append(
      el("span", `badge badge-${group}`, group),
      el("span", "bar-count", `${count} training images`),
    );
  }
  text.append(el("span", "bar-prob", formatProb(entry.score)));
  const track = el("div", "bar-track");
  track.setAttribute("aria-hidden", "true");
  const fill = el("div", "bar-fill");
  fill.style.width = `${Math.min(100, Math.max(0, entry.score * 100))}%`; // CSSOM: allowed by the CSP
  track.append(fill);
  row.append(text, track);
  return row;
}

function renderPrediction(data, ms) {
  const prediction = data.predictions[0];
  const counts = state.model.class_counts || [];
  const thresholds = shotThresholds(state.model);
  $("bars").replaceChildren(...prediction.top_k.map((e) => barRow(e, counts[e.class_id], thresholds)));
  const cal = data.calibration;
  $("summary").textContent =
    `Predicted ${prediction.label} (class ${prediction.class_id}) with probability ` +
    `${formatProb(prediction.score)}; prior ${cal.prior}, T = ${cal.temperature.toFixed(3)}.`;
  $("timing").textContent =
    `${Math.round(ms)} ms · ${providerName(data.provider)} · ${data.model} v${data.version}`;
  $("timing").title = `request latency measured in the browser; execution provider ${data.provider}`;
}

// ----------------------------------------------------------------------------------------------- prior chart

async function refreshPrior() {
  if (!state.model) return;
  if (state.priorBusy) {
    state.priorAgain = true;
    return;
  }
  state.priorBusy = true;
  const name = state.model.name;
  try {
    const { data } = await api(`/v1/models/${encodeURIComponent(name)}/prior`);
    if (state.model?.name === name) {
      drawPriorChart(data);
      renderPriorTable(data);
      renderPriorStats(data);
    }
  } catch (err) {
    $("prior-stats").textContent = `Could not load the prior: ${describeError(err)}`;
  } finally {
    state.priorBusy = false;
    if (state.priorAgain) {
      state.priorAgain = false;
      refreshPrior();
    }
  }
}

function restartPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  if (!state.model) {
    clearPriorChart();
    return;
  }
  refreshPrior();
  schedulePoll();
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(async () => {
    if ($("live").checked && document.visibilityState === "visible") await refreshPrior();
    schedulePoll();
  }, POLL_MS);
}

function clearPriorChart() {
  state.priorData = null;
  for (const g of $("prior-chart").querySelectorAll(":scope > g")) g.remove();
  $("prior-table").tBodies[0].replaceChildren();
  $("prior-stats").textContent = "";
}

function decadeLabel(e) {
  if (e >= 0) return String(10 ** e);
  return e >= -3 ? (10 ** e).toFixed(-e) : `1e${e}`;
}

function chartScale(values, classes, width) {
  const positive = values.filter((v) => v > 0);
  const lo = positive.length ? Math.max(1e-6, Math.min(...positive)) : 1e-3;
  const hi = positive.length ? Math.max(...positive) : 1;
  const low = Math.floor(Math.log10(lo));
  const high = Math.max(Math.ceil(Math.log10(hi)), low + 1);
  const plotW = width - CHART.left - CHART.right;
  const plotH = CHART.height - CHART.top - CHART.bottom;
  const band = plotW / classes;
  return {
    low,
    high,
    band,
    width,
    x: (c) => CHART.left + band * (c + 0.5),
    y: (v) => CHART.top + (plotH * (high - Math.log10(Math.max(v, 10 ** low)))) / (high - low),
  };
}

function drawAxes(group, scale, names) {
  const right = scale.width - CHART.right;
  for (let e = scale.low; e <= scale.high; e += 1) {
    const y = scale.y(10 ** e);
    group.append(svgEl("line", { class: "grid", x1: CHART.left, x2: right, y1: y, y2: y }));
    group.append(
      svgEl("text", { class: "tick", x: CHART.left - 6, y: y + 4, "text-anchor": "end" }, decadeLabel(e)),
    );
  }
  const step = Math.ceil(names.length / Math.max(1, Math.floor((right - CHART.left) / 28)));
  const bottom = CHART.height - CHART.bottom;
  names.forEach((name, c) => {
    if (c % step) return;
    const label = name.length > 6 ? `${name.slice(0, 5)}…` : name;
    group.append(
      svgEl("text", { class: "tick", x: scale.x(c), y: bottom + 16, "text-anchor": "middle" }, label),
    );
  });
  group.append(
    svgEl("text", { class: "axis-title", x: (CHART.left + right) / 2, y: CHART.height - 6 }, "class"),
  );
  const midY = (CHART.top + bottom) / 2;
  group.append(
    svgEl(
      "text",
      { class: "axis-title", x: 14, y: midY, transform: `rotate(-90 14 ${midY})` },
      "π (log scale)",
    ),
  );
}

function drawSeries(group, scale, values, names, kind) {
  const offset = Math.min(scale.band * 0.18, 6) * (kind === "train" ? -1 : 1);
  const size = Math.max(2, Math.min(scale.band * 0.16, 5));
  const points = values.map((v, c) => `${scale.x(c) + offset},${scale.y(v)}`).join(" ");
  group.append(svgEl("polyline", { class: `series series-${kind}`, points }));
  const title = kind === "train" ? "training π" : "adaptive π";
  values.forEach((v, c) => {
    const cx = scale.x(c) + offset;
    const cy = scale.y(v);
    const attrs = { class: `mark mark-${kind}`, "data-class": c, "data-value": v };
    const mark =
      kind === "train"
        ? svgEl("circle", { ...attrs, cx, cy, r: size })
        : svgEl("rect", { ...attrs, x: cx - size, y: cy - size, width: 2 * size, height: 2 * size });
    mark.append(svgEl("title", {}, `${names[c]}: ${title} = ${formatPi(v)}`));
    group.append(mark);
  });
}

function drawPriorChart(data) {
  const svg = $("prior-chart");
  state.priorData = data;
  const width = Math.max(CHART.minWidth, Math.round(svg.getBoundingClientRect().width) || 640);
  svg.setAttribute("viewBox", `0 0 ${width} ${CHART.height}`);
  const names = data.class_names;
  const scale = chartScale([...data.train, ...data.adaptive], names.length, width);
  const group = svgEl("g", { class: "chart-content" });
  drawAxes(group, scale, names);
  drawSeries(group, scale, data.train, names, "train");
  drawSeries(group, scale, data.adaptive, names, "adaptive");
  for (const g of svg.querySelectorAll(":scope > g")) g.remove();
  svg.append(group);
}

function renderPriorTable(data) {
  const counts = state.model?.class_counts || [];
  const rows = data.class_names.map((name, c) => {
    const row = el("tr");
    row.append(el("th", "", name), el("td", "", String(counts[c] ?? "")));
    row.firstChild.scope = "row";
    row.append(el("td", "", formatPi(data.train[c])), el("td", "", formatPi(data.adaptive[c])));
    return row;
  });
  $("prior-table").tBodies[0].replaceChildren(...rows);
}

function renderPriorStats(data) {
  const time = new Date().toLocaleTimeString();
  $("prior-stats").textContent =
    `${data.n_seen} images seen · window ${data.window_filled} / ${data.window_size} · ` +
    `EM iterations ${data.em_iterations} · refreshed ${time}`;
  const kl = data.kl_adaptive_train;
  $("prior-divergence").textContent = Number.isFinite(kl)
    ? `Label shift: KL(adaptive ‖ training π) = ${kl.toFixed(3)} nats`
    : "";
  $("prior-divergence").dataset.kl = Number.isFinite(kl) ? String(kl) : "";
  $("prior-stats").dataset.nSeen = String(data.n_seen);
}

async function resetPrior() {
  if (!state.model) return;
  const button = $("reset-prior");
  button.disabled = true;
  try {
    await api(`/v1/models/${encodeURIComponent(state.model.name)}/prior/reset`, { method: "POST" });
    await refreshPrior();
  } catch (err) {
    showError(describeError(err));
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------------- wiring

function wireTokenForm() {
  $("token").value = getToken();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    loadModels();
  });
  $("token-clear").addEventListener("click", () => {
    $("token").value = "";
    setToken("");
    loadModels();
  });
}

function wireImageInput() {
  const input = $("file");
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    await useFile(file);
    input.value = ""; // choosing the same file again fires "change" again
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useFile(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = clipboardFile(event.clipboardData);
    if (!file) return; // plain text: let it paste into the focused field
    event.preventDefault();
    useFile(file);
  });
  $("preview").addEventListener("error", () => {
    $("preview").hidden = true;
  });
}

function wireOptions() {
  $("model").addEventListener("change", (event) => selectModel(event.target.value));
  for (const radio of document.querySelectorAll('input[name="prior"]')) {
    radio.addEventListener("change", () => {
      $("custom-editor").hidden = priorKind() !== "custom";
      predict();
    });
  }
  $("custom-apply").addEventListener("click", () => predict());
  $("use-temperature").addEventListener("change", () => predict());
  $("top-k").addEventListener("change", () => predict());
  $("reset-prior").addEventListener("click", () => resetPrior());
  $("live").addEventListener("change", () => {
    if ($("live").checked) refreshPrior();
  });
  let lastWidth = 0;
  new ResizeObserver((entries) => {
    const width = Math.round(entries[0].contentRect.width);
    if (width === lastWidth) return;
    lastWidth = width;
    if (state.priorData) drawPriorChart(state.priorData);
  }).observe($("prior-chart"));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && $("live").checked) refreshPrior();
  });
}

function init() {
  wireTokenForm();
  wireImageInput();
  wireOptions();
  $("custom-editor").hidden = priorKind() !== "custom";
  loadModels();
}

init();
