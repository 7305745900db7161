// The playground: pick a model, give it any of image/audio/text, show the answer.
// Talks only to the public API: GET /v1/models, POST /v1/models/{m}/predict|embed.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["image", "audio", "text", "top_k", "model", "token"];
const REQUEST_TIMEOUT_MS = 60000;
const state = { models: [], files: { image: null, audio: null }, recorder: null, token: sessionStorage.getItem("fusionserve-token") || "" };

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function clearErrors() {
  FIELDS.forEach((f) => { const el = $(f + "-error"); if (el) el.textContent = ""; });
  $("form-error").textContent = "";
}

// Which field a server error concerns: details.field(s), else "field 'x'" / "x:" in the message.
function errorField(status, error) {
  if (status === 401) return "token";
  if (status === 404) return "model";
  const details = error.details || {};
  const named = details.field || (details.fields || [])[0] || details.modality;
  const message = error.message || "";
  const quoted = message.match(/field '([a-z_]+)'/) || message.match(/^(?:items\[\d+\]\.)?(image|audio|text|top_k)\b/);
  const field = named || (quoted && quoted[1]);
  return FIELDS.includes(field) ? field : "form";
}

function showError(status, body) {
  const error = (body && body.error) || { message: String(body) };
  const message = typeof error === "string" ? error : error.message;
  const field = errorField(status, typeof error === "string" ? { message: error } : error);
  if (field === "token") $("token-section").hidden = false;
  $(field + "-error").textContent = `${status}: ${message}`;
}

async function api(path, options = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) }, signal: controller.signal });
    const text = await response.text();
    let body;
    try { body = JSON.parse(text); } catch { body = text || response.statusText; }
    return { status: response.status, ok: response.ok, body };
  } catch (e) {
    const reason = e.name === "AbortError" ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : e.message;
    return { status: 0, ok: false, body: { error: { message: "request failed: " + reason } } };
  } finally {
    clearTimeout(timer);
  }
}

function currentModel() {
  return state.models.find((m) => m.name === $("model-select").value);
}

function applyModel() {
  const model = currentModel();
  if (!model) return;
  const modalities = Object.keys(model.modalities || {});
  document.querySelectorAll("[data-modality]").forEach((el) => {
    const used = modalities.includes(el.dataset.modality);
    el.toggleAttribute("data-disabled", !used);
    el.querySelectorAll("input, textarea, button").forEach((i) => { i.disabled = !used; });
  });
  $("top-k-section").hidden = model.task !== "classify";
  const readiness = model.ready ? "ready" : "NOT READY" + (model.error ? ": " + model.error : "");
  $("model-info").textContent = `${model.task || "?"} · ${modalities.join(" + ") || "?"} · ${readiness}` +
    (model.description ? ` — ${model.description}` : "");
}

async function loadModels() {
  const answer = await api("/v1/models");
  if (!answer.ok) { showError(answer.status, answer.body); return; }
  state.models = answer.body.models;
  const select = $("model-select");
  select.innerHTML = "";
  state.models.forEach((m) => select.add(new Option(m.name + (m.ready ? "" : " (not ready)"), m.name)));
  if (!state.models.length) { $("model-error").textContent = "the server has no models"; return; }
  select.disabled = false;
  $("submit").disabled = false;
  applyModel();
}

function setFile(kind, file) {
  state.files[kind] = file;
  $(kind + "-error").textContent = "";
  const preview = $(kind + "-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  if (file) preview.src = URL.createObjectURL(file); else preview.removeAttribute("src");
  if (kind === "audio") $("audio-info").textContent = file ? `${file.name} (${Math.round(file.size / 1024)} KiB)` : "";
  if (!file) $(kind + "-input").value = "";
}

function wireInputs() {
  $("image-input").addEventListener("change", (e) => setFile("image", e.target.files[0] || null));
  $("audio-input").addEventListener("change", (e) => setFile("audio", e.target.files[0] || null));
  const drop = $("image-drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) setFile("image", e.dataTransfer.files[0]); });
  document.querySelectorAll("[data-clear]").forEach((b) => b.addEventListener("click", () => setFile(b.dataset.clear, null)));
  $("model-select").addEventListener("change", applyModel);
  $("token-input").value = state.token;
  $("token-input").addEventListener("change", (e) => { state.token = e.target.value.trim(); sessionStorage.setItem("fusionserve-token", state.token); loadModels(); });
  $("record").addEventListener("click", toggleRecording);
  $("form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
}

async function toggleRecording() {
  const button = $("record");
  $("audio-error").textContent = "";
  try {
    if (!state.recorder) {
      state.recorder = await WavRecorder.start();
      button.classList.add("recording");
      button.textContent = "■ Stop";
      return;
    }
    const recorder = state.recorder;
    state.recorder = null;
    button.classList.remove("recording");
    button.textContent = "● Record";
    const wav = await recorder.stop();
    setFile("audio", new File([wav], "recording.wav", { type: "audio/wav" }));
  } catch (e) {
    state.recorder = null;
    button.classList.remove("recording");
    button.textContent = "● Record";
    $("audio-error").textContent = "recording failed: " + e.message;
  }
}

function shellQuote(s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; }

function curlCommand(url, parts) {
  const lines = [`curl -sS -X POST ${shellQuote(url)}`];
  if (state.token) lines.push(`-H "Authorization: Bearer $FUSIONSERVE_API_TOKEN"`);
  parts.forEach(([name, value, isFile]) => lines.push(isFile ? `-F ${shellQuote(name + "=@" + value)}` : `-F ${shellQuote(name + "=" + value)}`));
  return lines.join(" \\\n  ");
}

async function submit() {
  clearErrors();
  const model = currentModel();
  if (!model) { $("model-error").textContent = "pick a model first"; return; }
  const modalities = Object.keys(model.modalities || {});
  const form = new FormData();
  const parts = [];
  ["image", "audio"].forEach((kind) => {
    const file = state.files[kind];
    if (file && modalities.includes(kind)) { form.append(kind, file, file.name); parts.push([kind, file.name, true]); }
  });
  const text = $("text-input").value;
  if (text && modalities.includes("text")) { form.append("text", text); parts.push(["text", text, false]); }
  const task = model.task === "embed" ? "embed" : "predict";
  if (task === "predict" && $("top-k-input").value) { form.append("top_k", $("top-k-input").value); parts.push(["top_k", $("top-k-input").value, false]); }
  if (!parts.some(([name]) => name !== "top_k")) { $("form-error").textContent = "give at least one input: " + modalities.join(", "); return; }
  const path = `/v1/models/${encodeURIComponent(model.name)}/${task}`;
  $("curl").textContent = curlCommand(location.origin + path, parts);
  $("submit").disabled = true;
  $("status").textContent = "running…";
  const started = performance.now();
  const answer = await api(path, { method: "POST", body: form });
  $("submit").disabled = false;
  $("status").textContent = answer.ok ? `${answer.status} in ${Math.round(performance.now() - started)} ms` : `failed (${answer.status || "no answer"})`;
  if (!answer.ok) { showError(answer.status, answer.body); return; }
  render(answer.body, task);
}

function bars(container, entries) {
  const max = Math.max(...entries.map(([, v]) => Math.abs(v)), 1e-9);
  entries.forEach(([label, value]) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = label;
    row.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    row.querySelector(".label").textContent = label;
    row.querySelector(".fill").style.width = (100 * Math.abs(value) / max).toFixed(1) + "%";
    row.querySelector(".value").textContent = value.toFixed(3);
    container.appendChild(row);
  });
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / (Math.sqrt(na * nb) || 1);
}

function similarityTable(vectors) {
  const names = Object.keys(vectors);
  if (names.length < 2) return "<p class='hint'>Send two or more modalities to compare them.</p>";
  const head = "<tr><th></th>" + names.map((n) => `<th>${n}</th>`).join("") + "</tr>";
  const rows = names.map((a) => `<tr><th>${a}</th>` + names.map((b) => `<td>${cosine(vectors[a], vectors[b]).toFixed(3)}</td>`).join("") + "</tr>");
  return `<h3>Similarity of the inputs (cosine)</h3><table class="sim">${head}${rows.join("")}</table>`;
}

function render(body, task) {
  $("answer").hidden = false;
  $("answer-head").textContent = `${body.model} v${body.version}`;
  $("modalities").innerHTML = "Modalities used: " + (body.modalities || []).map((m) => `<span class="chip">${m}</span>`).join("");
  const result = $("result");
  result.innerHTML = "";
  $("attribution").innerHTML = "";
  $("similarity").innerHTML = "";
  if (task === "predict") {
    result.innerHTML = "<h3>Top labels</h3>";
    bars(result, (body.predictions || []).map((p) => [p.label, p.score]));
  }
  const attribution = body.attribution || body.modality_attribution || body.attributions;
  if (attribution && typeof attribution === "object") {
    $("attribution").innerHTML = "<h3>Per-modality attribution</h3>";
    bars($("attribution"), Object.entries(attribution).filter(([, v]) => typeof v === "number"));
  }
  if (body.embeddings && typeof body.embeddings === "object") {
    const vectors = { ...body.embeddings };
    if (Array.isArray(body.embedding)) vectors.fused = body.embedding;
    $("similarity").innerHTML = similarityTable(vectors);
  }
  $("raw").textContent = JSON.stringify(body, (k, v) => (Array.isArray(v) && v.length > 16 && typeof v[0] === "number" ? `[${v.length} numbers]` : v), 2);
}

wireInputs();
loadModels();
