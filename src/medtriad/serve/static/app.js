// medtriad search page: builds the multipart query, shows ranked studies with their pictures,
// and draws the explanation maps the server returns over them. No dependencies, no build step.
// Server text is only ever inserted with textContent.
"use strict";

const TOKEN_KEY = "medtriad-token";
const files = { cxr: null, ecg: null };
const $ = (id) => document.getElementById(id);
let lastResults = [];

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let reason = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) reason = body.error;
    } catch (_) { /* not JSON */ }
    throw new Error(reason);
  }
  return response;
}

// ------------------------------------------------------------------ colour maps

// A perceptually ordered ramp (dark blue, teal, yellow, red) sampled at 5 stops.
const STOPS = [[48, 18, 59], [40, 130, 200], [60, 200, 120], [250, 200, 40], [220, 40, 20]];

function ramp(v) {
  const x = Math.min(1, Math.max(0, v)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  return STOPS[i].map((c, j) => Math.round(c + f * (STOPS[i + 1][j] - c)));
}

function normalise(values) {
  const flat = values.flat(Infinity).filter((v) => Number.isFinite(v));
  const lo = Math.min(...flat);
  const hi = Math.max(...flat);
  const span = hi - lo || 1;
  return (v) => (Number.isFinite(v) ? (v - lo) / span : 0);
}

function fitCanvas(canvas, img) {
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  return ctx;
}

// An (h, w) patch grid over the whole square thumbnail, smoothly upsampled.
function drawGrid(canvas, img, grid) {
  const ctx = fitCanvas(canvas, img);
  if (!grid || !grid.length) return;
  const h = grid.length;
  const w = grid[0].length;
  const norm = normalise(grid);
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const sctx = small.getContext("2d");
  const data = sctx.createImageData(w, h);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const v = norm(grid[r][c]);
      const [R, G, B] = ramp(v);
      const o = 4 * (r * w + c);
      data.data.set([R, G, B, Math.round(255 * (0.1 + 0.55 * v))], o);
    }
  }
  sctx.putImageData(data, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

// One value per ECG time token: token i covers the i-th slice of the plot's full width.
function drawStrip(canvas, img, values) {
  const ctx = fitCanvas(canvas, img);
  if (!values || !values.length) return;
  const norm = normalise(values);
  const step = canvas.width / values.length;
  values.forEach((v, i) => {
    const n = norm(v);
    const [R, G, B] = ramp(n);
    ctx.fillStyle = `rgba(${R}, ${G}, ${B}, ${0.05 + 0.4 * n})`;
    ctx.fillRect(i * step, 0, Math.ceil(step), canvas.height);
  });
}

function renderWords(container, words, fallbackText) {
  container.textContent = "";
  if (!words || !words.length) {
    container.textContent = fallbackText || "(no report)";
    return;
  }
  const norm = normalise(words.map((w) => w[1]).filter((v) => v !== null));
  words.forEach(([word, weight], i) => {
    const span = document.createElement("span");
    span.textContent = word;
    if (weight === null) {
      span.className = "word unseen";
      span.title = "beyond the text encoder's length";
    } else {
      const n = norm(weight);
      span.className = "word";
      span.title = "weight " + weight.toFixed(3);
      span.style.backgroundColor = `rgba(250, 160, 30, ${(n * n * 0.85).toFixed(3)})`;
    }
    container.appendChild(span);
    if (i < words.length - 1) container.appendChild(document.createTextNode(" "));
  });
}

// ------------------------------------------------------------------ results

async function loadPicture(img, url) {
  const response = await api(url);
  const blob = await response.blob();
  img.src = URL.createObjectURL(blob);
  await img.decode();
}

function drawMaps(node, result) {
  const kind = $("map-kind").value;
  const ex = result.explanation || {};
  const cxrImg = node.querySelector(".cxr img");
  const ecgImg = node.querySelector(".ecg img");
  const off = kind === "off";
  if (cxrImg.complete && cxrImg.naturalWidth) {
    drawGrid(node.querySelector(".cxr canvas"), cxrImg, off ? null : ex[kind === "relevance" ? "cxr_relevance" : "cxr_map"]);
  }
  if (ecgImg.complete && ecgImg.naturalWidth) {
    drawStrip(node.querySelector(".ecg canvas"), ecgImg, off ? null : ex[kind === "relevance" ? "ecg_relevance" : "ecg_map"]);
  }
}

function renderResult(result) {
  const node = $("result-template").content.firstElementChild.cloneNode(true);
  node.dataset.sampleId = result.sample_id;
  node.querySelector(".rank").textContent = "#" + result.rank;
  node.querySelector(".sid").textContent = result.sample_id;
  node.querySelector(".score").textContent = "score " + result.score.toFixed(3);
  node.querySelector(".terms").textContent = Object.entries(result.scores)
    .map(([name, v]) => `${name} ${v.toFixed(3)}`).join(" · ");
  const ex = result.explanation || {};
  renderWords(node.querySelector(".report"), ex.words, result.report_text);
  const id = encodeURIComponent(result.sample_id);
  const pictures = [];
  for (const [modality, url] of [["cxr", `/studies/${id}/cxr.png`], ["ecg", `/studies/${id}/ecg.png`]]) {
    const figure = node.querySelector("." + modality);
    if (!result.has[modality]) {
      figure.classList.add("absent");
      figure.querySelector("figcaption").textContent = modality === "cxr" ? "no X-ray" : "no ECG";
      continue;
    }
    pictures.push(loadPicture(figure.querySelector("img"), url).catch((err) => {
      figure.classList.add("absent");
      figure.querySelector("figcaption").textContent = err.message;
    }));
  }
  Promise.all(pictures).then(() => drawMaps(node, result));
  return node;
}

function showResults(payload) {
  const list = $("results");
  list.textContent = "";
  lastResults = payload.results;
  for (const result of payload.results) list.appendChild(renderResult(result));
  const q = payload.query;
  $("status").textContent = payload.results.length
    ? `${payload.results.length} studies for ${q.modalities.join(" + ")} (${q.geometry} geometry, ${payload.seconds} s)`
    : "no study matched";
}

function redrawAll() {
  document.querySelectorAll("#results .result").forEach((node, i) => drawMaps(node, lastResults[i]));
}

// ------------------------------------------------------------------ the form

function setFile(field, file) {
  files[field] = file || null;
  $("file-" + field).textContent = file ? file.name : "";
  $("drop-" + field).classList.toggle("has-file", Boolean(file));
}

function wireDrop(field) {
  const zone = $("drop-" + field);
  const input = $("input-" + field);
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => setFile(field, input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) setFile(field, e.dataTransfer.files[0]);
  });
}

async function search(event) {
  event.preventDefault();
  const form = new FormData();
  const text = $("text").value.trim();
  if (text) form.append("text", text);
  for (const field of ["cxr", "ecg"]) if (files[field]) form.append(field, files[field], files[field].name);
  if (!text && !files.cxr && !files.ecg) {
    $("status").textContent = "type a query or drop a file";
    return;
  }
  form.append("k", $("k").value);
  form.append("explain", $("map-kind").value === "off" ? "false" : "true");
  $("go").disabled = true;
  $("status").textContent = "searching…";
  try {
    const response = await api("/search", { method: "POST", body: form });
    showResults(await response.json());
  } catch (err) {
    $("status").textContent = "error: " + err.message;
  } finally {
    $("go").disabled = false;
  }
}

async function health() {
  try {
    const h = await (await fetch("/health")).json();
    $("index-info").textContent =
      `${h.studies} studies · ${h.modalities.join(", ")} · ${h.geometry} geometry` + (h.auth ? " · token required" : "");
  } catch (err) {
    $("index-info").textContent = "server unreachable";
  }
}

$("token").value = token();
$("token").addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()));
$("query").addEventListener("submit", search);
$("clear").addEventListener("click", () => {
  $("text").value = "";
  setFile("cxr", null);
  setFile("ecg", null);
  $("results").textContent = "";
  $("status").textContent = "";
});
$("map-kind").addEventListener("change", redrawAll);
window.addEventListener("resize", redrawAll);
wireDrop("cxr");
wireDrop("ecg");
health();
