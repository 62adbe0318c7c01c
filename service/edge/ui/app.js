// imgclf web page: try the classifier, read the model card, run retraining. No dependencies.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { model: null, token: sessionStorage.getItem("imgclf-token") || "" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// The service's own words for an error: {"error": "..."} bodies, else the status line.
async function call(path, options = {}, admin = false) {
  const headers = new Headers(options.headers || {});
  if (admin && state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const detail = body && (body.error || (Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail));
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// ------------------------------------------------------------------ tabs
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => show(tab.getAttribute("aria-controls")));
}
function show(id) {
  for (const tab of document.querySelectorAll(".tab")) {
    const on = tab.getAttribute("aria-controls") === id;
    tab.setAttribute("aria-selected", String(on));
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (id === "card") loadCard();
  if (id === "ops" && state.token) refreshOps();
  if (id === "label") loadQueue();
}

// ------------------------------------------------------------------ the served model
async function loadModel() {
  try {
    state.model = await call("/model");
    $("#served").textContent = `serving ${state.model.tag} · ${state.model.architecture} · ${state.model.runtime.chosen}`;
  } catch (err) {
    $("#served").textContent = "not ready: " + err.message;
  }
}

// ------------------------------------------------------------------ try it
const drop = $("#drop");
$("#files").addEventListener("change", (e) => classifyAll([...e.target.files]));
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#files").click(); } });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classifyAll([...e.dataTransfer.files]); });
document.addEventListener("paste", (e) => {
  const files = [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) classifyAll(files);
});

function classifyAll(files) {
  for (const file of files) classifyOne(file);
}

async function classifyOne(file) {
  const item = el("li", { class: "result" },
    el("img", { src: URL.createObjectURL(file), alt: file.name, class: "thumb",
                onerror: (e) => e.target.replaceWith(el("div", { class: "thumb", role: "img", "aria-label": "not displayable" })) }),
    el("div", { class: "body" }, el("p", { class: "name" }, file.name), el("p", { class: "muted" }, "classifying…")));
  $("#results").prepend(item);
  const body = item.querySelector(".body");
  const form = new FormData();
  form.append("image", file, file.name);
  const started = performance.now();
  try {
    const answer = await call(`/classify?top_k=${Number($("#topk").value) || 5}`, { method: "POST", body: form });
    const ms = performance.now() - started;
    body.replaceChildren(
      el("p", { class: "name" }, file.name),
      el("ol", { class: "bars", "aria-label": "predictions" }, answer.predictions.map((p) =>
        el("li", {}, el("span", { class: "label" }, p.label),
          el("span", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": p.score.toFixed(4),
                       "aria-label": `${p.label} ${pct(p.score)}` }, el("span", { style: `width:${(100 * p.score).toFixed(1)}%` })),
          el("span", { class: "score" }, pct(p.score)),
          p.path ? el("span", { class: "path muted" }, p.path.map((n) => `${n.label} ${pct(n.score)}`).join(" › ")) : null,
          p.threshold !== undefined ? el("span", { class: "path muted" },
            `${p.positive ? "✓ above" : "below"} its threshold ${pct(p.threshold)}`) : null))),
      answer.labels ? el("p", { class: "name" }, `Labels: ${answer.labels.join(", ") || "none above threshold"}`) : null,
      el("p", { class: "muted" }, `${ms.toFixed(0)} ms · ${answer.model} · ${answer.task}`),
      answer.task === "multilabel" || !answer.predictions.length ? null : feedbackControl(file, answer.predictions[0].label));
  } catch (err) {
    body.replaceChildren(el("p", { class: "name" }, file.name), el("p", { class: "error", role: "alert" }, err.message));
  }
}

function feedbackControl(file, predicted) {
  const classes = (state.model && state.model.classes) || [];
  const wrap = el("div", { class: "feedback" });
  const open = el("button", { type: "button", class: "secondary" }, "This prediction is wrong");
  open.addEventListener("click", () => {
    const select = el("select", { "aria-label": "correct label" },
      classes.filter((c) => c !== predicted).map((c) => el("option", { value: c }, c)));
    const send = el("button", { type: "button" }, "Send the correct label");
    const note = el("span", { class: "muted", "aria-live": "polite" });
    send.addEventListener("click", async () => {
      if (!state.token) { note.textContent = "enter the admin token under Operations first"; return; }
      const form = new FormData();
      form.append("image", file, file.name);
      form.append("label", select.value);
      try {
        const fb = await call("/feedback", { method: "POST", body: form }, true);
        note.textContent = fb.duplicate ? "already collected" : `thanks: kept as ${fb.label}`;
      } catch (err) { note.textContent = err.message; note.className = "error"; }
    });
    wrap.replaceChildren(select, send, note);
    select.focus();
  });
  wrap.append(open);
  return wrap;
}

// ------------------------------------------------------------------ model card
async function loadCard() {
  const target = $("#card-body");
  try {
    const m = await call("/model");
    const test = (m.metrics && m.metrics.test) || {};
    const pp = m.preprocessing;
    target.replaceChildren(
      el("h2", {}, m.tag),
      el("dl", { class: "facts" }, [
        ["Architecture", m.architecture], ["Created", when(m.created)], ["Runtime", `${m.runtime.chosen} (agreement ${pct(m.runtime.agreement)})`],
        ["Input", `${pp.channels} × ${pp.input_size} × ${pp.input_size}, ${pp.interpolation}, crop ${pp.crop_pct}`],
        ["Normalisation", `mean ${pp.mean.join(", ")} · std ${pp.std.join(", ")}`],
        ["Task", m.task],
        ...(m.task === "multilabel" ? [["Test mAP", pct(test.map)], ["Micro F1", pct(test.micro_f1)], ["Macro F1", pct(test.macro_f1)]]
          : [["Test accuracy", pct(test.accuracy)], ["Macro F1", pct(test.macro_f1)]]),
        ...(m.levels ? m.levels.map((_, i) => [`Accuracy at depth ${i + 1}`, pct(test[`level${i + 1}_accuracy`])]) : []),
        ["Dataset fingerprint", m.dataset_fingerprint || "–"], ["Worker", m.worker_pid]
      ].map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h3", {}, `Classes (${m.classes.length})`),
      el("p", { class: "classes" }, m.thresholds ? m.classes.map((c) => `${c} (≥ ${pct(m.thresholds[c])})`).join(" · ") : m.classes.join(" · ")),
      m.levels ? el("p", { class: "classes" }, m.levels.map((nodes, i) => `depth ${i + 1}: ${nodes.join(", ")}`).join(" — ")) : null,
      el("h3", {}, "Evaluation report"),
      el("div", { class: "pictures" }, m.report_pictures.map((p) =>
        el("figure", {}, el("img", { src: `/model/report/${p}`, alt: p.replace(".png", "").replace("_", " "), loading: "lazy" }),
          el("figcaption", {}, p.replace(".png", "").replace("_", " "))))));
  } catch (err) {
    target.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
}

// ------------------------------------------------------------------ operations
$("#token").value = state.token;
$("#token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("imgclf-token", state.token);
  await refreshOps();
});

let poller = null;
async function refreshOps() {
  try {
    const [jobs, models] = await Promise.all([call("/jobs?limit=20", {}, true), call("/models", {}, true)]);
    $("#token-state").textContent = "signed in";
    $("#ops-body").hidden = false;
    renderJobs(jobs);
    renderModels(models);
    const active = jobs.some((j) => j.status === "queued" || j.status === "running") || Boolean(models.rollout);
    clearTimeout(poller);
    poller = setTimeout(refreshOps, active ? 1500 : 8000);
  } catch (err) {
    $("#token-state").textContent = err.message;
    $("#ops-body").hidden = true;
  }
}

function renderJobs(jobs) {
  $("#jobs").replaceChildren(...jobs.map((j) => {
    const p = j.progress || {};
    const last = (p.history || []).slice(-1)[0];
    const d = j.decision;
    return el("li", { class: `job ${j.status}` },
      el("p", {}, el("strong", {}, j.id), " ", el("span", { class: `badge ${j.status}` }, j.status),
        p.epoch ? ` epoch ${p.epoch}/${p.epochs}` : "", last ? ` · val_acc ${pct(last.val_acc)} · loss ${last.loss.toFixed(3)}` : ""),
      p.epoch ? el("progress", { max: p.epochs, value: p.epoch, "aria-label": `job ${j.id} progress` }) : null,
      j.result_tag ? el("p", { class: "muted" }, "model ", j.result_tag) : null,
      d ? el("p", { class: d.promoted ? "ok" : "error" }, d.reason) : null,
      d && d.champion ? el("p", { class: "muted" }, `challenger ${pct(d.challenger[d.challenger.primary || "accuracy"])} vs champion ${pct(d.champion[d.challenger.primary || "accuracy"])} ${d.challenger.primary === "map" ? "mAP" : "accuracy"} on ${d.holdout}`) : null,
      j.error ? el("p", { class: "error" }, j.error) : null,
      j.status === "running" || j.status === "queued"
        ? el("button", { type: "button", class: "secondary", onclick: () => act(`/jobs/${j.id}/cancel`, {}, "#retrain-state") }, "Cancel") : null);
  }));
}

function renderModels(models) {
  $("#champion-state").textContent = models.champion ? `champion: ${models.champion}` : "no champion yet";
  $("#versions tbody").replaceChildren(...models.versions.map((v) => el("tr", {},
    el("td", {}, v.tag, v.champion ? el("span", { class: "badge succeeded" }, "champion") : null),
    el("td", {}, when(v.created)),
    el("td", {}, pct(v.metrics && v.metrics.test && (v.metrics.test.accuracy ?? v.metrics.test.map))),
    el("td", {}, v.champion ? "" : [
      el("button", { type: "button", class: "secondary", onclick: () => act("/models/promote", { tag: v.tag, reason: "promoted from the web page" }, "#champion-state") }, "Promote"),
      " ",
      models.rollout ? null : [
        el("button", { type: "button", class: "secondary", onclick: () => act("/rollout", { tag: v.tag, reason: "rolled out from the web page" }, "#shadow-state") }, "Roll out"),
        " ",
        el("button", { type: "button", class: "secondary", onclick: () => act("/models/shadow", { tag: v.tag, fraction: 0.25, reason: "shadowed from the web page" }, "#shadow-state") }, "Shadow")]]))));
  renderRollout(models.rollout, models.shadow);
  const ev = models.evaluation_set;
  $("#evaluation-set").textContent = ev && ev.images
    ? `Rolling evaluation set: ${ev.images} feedback images kept out of training (${pct(ev.share)} of feedback), ${when(ev.oldest)} to ${when(ev.newest)}; the gate judges both sides on it.`
    : `Rolling evaluation set: empty (${pct(ev ? ev.share : 0)} of feedback images will be kept out of training to judge models on).`;
  $("#history").replaceChildren(...models.history.map((e) => el("li", {},
    el("span", { class: `badge ${e.kind}` }, e.kind), " ", e.tag || "", " · ", when(e.created_at), el("br"), el("span", { class: "muted" }, e.reason))));
  const counts = Object.entries(models.feedback);
  $("#feedback-counts").textContent = counts.length ? counts.map(([k, n]) => `${k}: ${n}`).join(" · ") : "none yet";
}

function renderRollout(r, shadow) {
  $("#rollout").hidden = !r;
  if (!r) {
    $("#shadow-state").textContent = "no rollout: a challenger that passes the gate goes through shadow and canary when IMGCLF_ROLLOUT says so; start one with a version's Roll out button";
    return;
  }
  const c = r.counts || {};
  const ours = c.challenger || {};
  const theirs = c.champion || {};
  const stage = r.stage === "shadow"
    ? `shadow: it scores ${pct(r.fraction)} of images beside the champion, off the answer's path`
    : `canary: it answers ${pct(r.fraction)} of requests`;
  const seen = r.stage === "shadow"
    ? `${c.compared || 0} images compared, agreement ${pct(c.agreement)}, ${c.dropped || 0} dropped while busy`
    : `${ours.images || 0} challenger answers (p99 ${ms(ours.p99_ms)}) vs ${theirs.images || 0} champion (p99 ${ms(theirs.p99_ms)})`;
  $("#shadow-state").replaceChildren(el("span", {}, el("strong", {}, r.tag), ` in ${stage} since ${when(r.stage_started_at)} · ${seen}`,
    r.plan.guards ? "" : " · observing only"));
  $("#guards tbody").replaceChildren(...(r.guards || []).map((g) => el("tr", {},
    el("td", {}, g.guard.replaceAll("_", " ")),
    el("td", {}, g.value === null || g.value === undefined ? "–" : String(g.value)),
    el("td", {}, String(g.threshold)),
    el("td", {}, el("span", { class: `badge ${g.ok === false ? "failed" : g.ok ? "succeeded" : "queued"}` }, g.ok === false ? "failed" : g.ok ? "holds" : "waiting")),
    el("td", { class: "muted" }, g.evidence))));
  $("#rollout-history").replaceChildren(...r.history.map((h) => el("li", {},
    el("span", { class: `badge ${h.action}` }, h.action), " ", h.stage || "", " · ", when(h.at), el("br"), el("span", { class: "muted" }, h.reason))));
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(1)} ms`;
}

$("#rollout-promote").addEventListener("click", () => act("/rollout/promote", { reason: "promoted from the web page" }, "#shadow-state"));
$("#rollout-abort").addEventListener("click", () => act("/rollout/abort", { reason: "aborted from the web page" }, "#shadow-state"));

async function act(path, body, where) {
  try {
    await call(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }, true);
    $(where).textContent = "done";
  } catch (err) {
    $(where).textContent = err.message;
  }
  await loadModel();
  await refreshOps();
}

$("#rollback").addEventListener("click", () => act("/models/rollback", { reason: "rolled back from the web page" }, "#champion-state"));
$("#retrain-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { include_feedback: $("#rt-feedback").checked, auto_promote: $("#rt-promote").checked };
  if ($("#rt-data").value.trim()) body.data = $("#rt-data").value.trim();
  if ($("#rt-epochs").value) body.epochs = Number($("#rt-epochs").value);
  if ($("#rt-model").value.trim()) body.model = $("#rt-model").value.trim();
  try {
    const job = await call("/retrain", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }, true);
    $("#retrain-state").textContent = `job ${job.job_id} started`;
    $("#retrain-state").className = "message ok";
  } catch (err) {
    $("#retrain-state").textContent = err.message;
    $("#retrain-state").className = "message error";
  }
  await refreshOps();
});

// ------------------------------------------------------------------ labelling queue
// Captured live images, least certain first; one click or key per label. Images are fetched with the
// token (an <img src> cannot send it) and shown from a blob URL.
const queue = { items: [], classes: [], current: null, url: null };

async function loadQueue() {
  if (!state.token) { $("#label-body").hidden = true; return; }
  try {
    const answer = await call("/captures?status=pending&limit=50", {}, true);
    queue.items = answer.items;
    queue.classes = answer.classes;
    const c = answer.counts;
    $("#label-counts").textContent = `${c.pending || 0} waiting · ${c.labelled || 0} labelled · ${c.skipped || 0} skipped · ${c.none || 0} none of the classes`;
    $("#label-body").hidden = false;
    await showNext();
  } catch (err) {
    $("#label-state").textContent = err.message;
    $("#label-body").hidden = true;
  }
}

async function showNext() {
  queue.current = queue.items.shift() || null;
  if (queue.url) URL.revokeObjectURL(queue.url);
  const card = queue.current;
  $("#label-card").hidden = !card;
  $("#label-choices").replaceChildren();
  for (const b of ["#label-skip", "#label-none"]) $(b).disabled = !card;
  if (!card) { $("#label-state").textContent = "Nothing to label: the queue is empty."; return; }
  const response = await fetch(`/captures/${card.sha256}/image`, { headers: { Authorization: "Bearer " + state.token } });
  queue.url = URL.createObjectURL(await response.blob());
  $("#label-image").src = queue.url;
  $("#label-caption").textContent = `${card.tag} answered ${card.predicted} (${pct(card.confidence)}, margin ${pct(card.margin)}) · kept for ${card.reason.replace("_", " ")}`;
  $("#label-state").textContent = "Which class is it?";
  $("#label-choices").replaceChildren(...queue.classes.map((c, i) =>
    el("button", { type: "button", class: c === card.predicted ? "" : "secondary", onclick: () => settle("label", c) },
      i < 10 ? el("kbd", {}, String((i + 1) % 10)) : null, " ", c)));
}

async function settle(action, label) {
  const card = queue.current;
  if (!card) return;
  try {
    await call(`/captures/${card.sha256}`, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(label ? { action, label } : { action }) }, true);
    $("#label-last").textContent = action === "label" ? `labelled ${label}` : action === "skip" ? "skipped" : "none of these";
    $("#label-last").className = "muted";
  } catch (err) {
    $("#label-last").textContent = err.message;
    $("#label-last").className = "error";
  }
  if (!queue.items.length) await loadQueue(); else await showNext();
}

$("#label-skip").addEventListener("click", () => settle("skip"));
$("#label-none").addEventListener("click", () => settle("none"));
document.addEventListener("keydown", (e) => {
  if ($("#label").hidden || !queue.current || e.target.matches("input, select, textarea")) return;
  if (e.key === "s") settle("skip");
  else if (e.key === "n") settle("none");
  else if (/^[0-9]$/.test(e.key)) {
    const i = (Number(e.key) + 9) % 10;
    if (i < queue.classes.length) settle("label", queue.classes[i]);
  }
});

setInterval(loadModel, 10000);
loadModel();
