// The page: a token form, the runs list and one run, switched by the address's #fragment
// (#/ and #/projects/<id>). Each view polls the API while it is shown; nothing reloads.

import { api, ApiError, token, Unauthorized } from "./api.js";
import { lineChart } from "./chart.js";
import { byId, el, replaceChildren, setText } from "./dom.js";
import * as fmt from "./format.js";

const RUNS_LIMIT = 50;
const LOG_LINES = 20;
const ACTIVE_EVERY_MS = 2000; // a run that trains, and the runs list
const ENDED_EVERY_MS = 10000; // a run that ended: its last log lines may still come
const ACTIVE = new Set(["Queued", "Pending", "Running"]);
const VIEWS = ["token-view", "runs-view", "run-view"];

let current = null; // the shown view's poller
let cancelTarget = null; // the run the shown page would cancel

// -- plumbing ------------------------------------------------------------------------------
function show(view) {
  for (const name of VIEWS) byId(name).hidden = name !== view;
  byId("nav").hidden = view === "token-view";
}

function notice(message) {
  const node = byId("notice");
  setText(node, message || "");
  node.hidden = !message;
}

// Calls task(signal) now, then again after the number of ms it answers, until it answers
// false or the poller is stopped. now() asks for the next call at once.
function poll(task) {
  const controller = new AbortController();
  let timer = null;
  let stopped = false;
  let failed = false;
  let busy = false;
  let soon = false;
  async function tick() {
    if (stopped) return;
    if (busy) {
      soon = true;
      return;
    }
    busy = true;
    clearTimeout(timer);
    let wait;
    try {
      wait = await task(controller.signal);
      if (failed) notice("");
      failed = false;
    } catch (error) {
      if (stopped || error.name === "AbortError") return;
      if (error instanceof Unauthorized) {
        askForToken(error.message);
        return;
      }
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        notice(error.message); // e.g. an unknown project: asking again will not help
        return;
      }
      failed = true;
      notice(`Could not reach the API: ${error.message}. Retrying…`);
      wait = ACTIVE_EVERY_MS * 2;
    } finally {
      busy = false;
    }
    if (stopped || wait === false) return;
    timer = setTimeout(tick, soon ? 0 : wait);
    soon = false;
  }
  tick();
  return {
    now: tick,
    stop() {
      stopped = true;
      clearTimeout(timer);
      controller.abort();
    },
  };
}

function route() {
  if (current) current.stop();
  current = null;
  cancelTarget = null;
  notice("");
  if (!token.get()) {
    askForToken();
    return;
  }
  const match = /^#\/projects\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  current = match ? showRun(match[1]) : showRuns();
}

// -- the token -----------------------------------------------------------------------------
function askForToken(problem) {
  if (current) current.stop();
  current = null;
  token.clear();
  notice("");
  const shown = ["runs-body", "run-facts", "run-logs", "loss-chart", "accuracy-chart", "confusion-matrix"];
  for (const node of shown) replaceChildren(byId(node)); // no data stays on the page
  for (const node of ["run-project", "run-name", "run-phase", "run-epochs"]) setText(byId(node), "");
  document.title = "Training Agent";
  const error = byId("token-error");
  setText(error, problem ? `The token was not accepted (${problem}).` : "");
  error.hidden = !problem;
  show("token-view");
  byId("token-input").focus();
}

function onTokenSubmitted(event) {
  event.preventDefault();
  const input = byId("token-input");
  const value = input.value.trim();
  input.value = "";
  if (!value) return;
  token.set(value);
  route();
}

// -- the runs list -------------------------------------------------------------------------
function runRow(item) {
  const { run, progress } = item;
  const total = progress.total_epochs || run.epochs || 0;
  const done = progress.epoch || 0;
  const bar = el("progress", { max: total || 1, value: Math.min(done, total || 1) });
  return el("tr", { "data-project-id": item.project_id, "data-run-id": run.id },
    el("td", {}, el("a", { href: `#/projects/${item.project_id}`, class: "project", text: item.project_name })),
    el("td", { text: run.model || fmt.dash }),
    el("td", {}, el("span", { class: `phase phase-${run.phase.toLowerCase()}`, text: run.phase })),
    el("td", { class: "progress-cell" }, bar, el("span", { text: `${done}/${total || "?"}` })),
    el("td", { class: "number", text: fmt.percent(progress.val_accuracy) }),
    el("td", { class: "number", text: fmt.rate(progress.images_per_second) }),
    el("td", { text: fmt.when(run.started_at) }),
    el("td", { class: "number", text: fmt.duration(fmt.runSeconds(run)) }),
  );
}

function showRuns() {
  show("runs-view");
  document.title = "Training runs — Training Agent";
  return poll(async (signal) => {
    const answer = await api.runs(RUNS_LIMIT, signal);
    if (signal.aborted) return false; // the view was left while the answer came
    replaceChildren(byId("runs-body"), answer.runs.map(runRow));
    byId("runs-empty").hidden = answer.runs.length > 0;
    return ACTIVE_EVERY_MS;
  });
}

// -- one run -------------------------------------------------------------------------------
function fact(term, value, className) {
  return [el("dt", { text: term }), el("dd", { class: className, text: value })];
}

function curves(history, totalEpochs) {
  const points = (key) => history.map((epoch) => ({ x: epoch.epoch, y: epoch[key] }));
  replaceChildren(byId("loss-chart"), lineChart({
    label: "Training and validation loss by epoch",
    xMax: totalEpochs,
    y: { min: 0, format: (v) => v.toFixed(2) },
    series: [
      { name: "train loss", key: "loss", points: points("loss") },
      { name: "val loss", key: "val_loss", points: points("val_loss") },
    ],
  }));
  replaceChildren(byId("accuracy-chart"), lineChart({
    label: "Validation accuracy by epoch",
    xMax: totalEpochs,
    y: { min: 0, max: 1, format: (v) => `${Math.round(v * 100)}%` },
    series: [{ name: "val accuracy", key: "val_accuracy", points: points("val_accuracy") }],
  }));
}

function confusionTable(metrics) {
  const matrix = metrics.confusion_matrix;
  const names = matrix.map((_, i) => (metrics.classes && metrics.classes[i]) ?? String(i));
  const largest = Math.max(1, ...matrix.flat());
  const head = el("tr", {}, el("th", { class: "corner", text: "true \\ predicted" }),
    names.map((name) => el("th", { scope: "col", class: "class-name", text: name })));
  const rows = matrix.map((row, i) => el("tr", {},
    el("th", { scope: "row", class: "class-name", text: names[i] }),
    row.map((count, j) => el("td", {
      class: `cell heat-${Math.min(7, Math.ceil((count / largest) * 7))}${i === j ? " diagonal" : ""}`,
      title: `true ${names[i]}, predicted ${names[j]}: ${count}`,
      text: count,
    }))));
  return [el("thead", {}, head), el("tbody", {}, rows)];
}

function renderRun(status, metrics) {
  const run = status.run;
  const progress = status.progress;
  const total = progress.total_epochs || (run && run.epochs) || 0;
  const done = progress.epoch || 0;
  const active = Boolean(run && ACTIVE.has(run.phase));
  document.title = `${status.project_name} — Training Agent`;
  setText(byId("run-project"), status.project_name);
  setText(byId("run-name"), run ? `${run.name} (attempt ${run.attempt})` : "never trained");
  const phase = byId("run-phase");
  setText(phase, run ? run.phase : "not started");
  phase.className = `phase phase-${run ? run.phase.toLowerCase() : "none"}`;
  const bar = byId("run-progress");
  bar.max = total || 1;
  bar.value = Math.min(done, total || 1);
  setText(byId("run-epochs"), run ? `epoch ${done}/${total || "?"}` : "");
  const error = byId("run-error");
  setText(error, run && run.error);
  error.hidden = !(run && run.error);

  const running = run && run.phase === "Running";
  replaceChildren(byId("run-facts"), [
    fact("Project status", status.project_status),
    fact("Model", (run && run.model) || fmt.dash),
    fact("Loss", fmt.number(progress.loss)),
    fact("Val accuracy", fmt.percent(progress.val_accuracy)),
    fact("Images/s", fmt.rate(progress.images_per_second)),
    fact("ETA", running ? fmt.duration(progress.eta_seconds) : fmt.dash),
    fact("Started", fmt.when(run && run.started_at)),
    fact("Duration", fmt.duration(fmt.runSeconds(run))),
    fact("Model URL", status.model_url || fmt.dash, "url"),
    metrics && metrics.metrics_url ? fact("Metrics file", metrics.metrics_url, "url") : [],
  ]);
  curves(status.history || [], total);
  replaceChildren(byId("run-logs"), status.logs.map((line) => el("li", { class: `log log-${line.level}` },
    el("time", { text: fmt.when(line.created_at) }), " ",
    el("span", { class: "level", text: line.level }), " ",
    el("span", { class: "message", text: line.message }))));

  const confusion = byId("confusion");
  confusion.hidden = !metrics;
  if (metrics) {
    const missing = byId("confusion-missing");
    missing.hidden = !metrics.problem;
    setText(missing, metrics.problem && `No confusion matrix: ${metrics.problem}`);
    setText(byId("confusion-split"), metrics.problem ? "" : `(${metrics.confusion_matrix_split || "val"} split)`);
    replaceChildren(byId("confusion-matrix"), metrics.problem ? [] : confusionTable(metrics));
  }
  const cancel = byId("cancel-run");
  cancel.hidden = !active;
  if (!active) cancel.disabled = false;
  return active;
}

function showRun(projectId) {
  show("run-view");
  for (const node of ["run-project", "run-name", "run-phase", "run-epochs"]) setText(byId(node), "");
  for (const node of ["run-facts", "run-logs", "loss-chart", "accuracy-chart"]) replaceChildren(byId(node));
  byId("confusion").hidden = true;
  byId("cancel-run").hidden = true;
  byId("run-error").hidden = true;
  let metrics = null; // of the run that succeeded: the file's content, or why there is none
  let metricsOf = null; // that run's id

  async function loadMetrics(signal) {
    try {
      return await api.metrics(projectId, signal);
    } catch (error) {
      const passing = error instanceof ApiError && (error.status === 503 || error.status === 429);
      if (!(error instanceof ApiError) || passing) throw error; // asked again next time
      return { problem: error.message };
    }
  }

  const poller = poll(async (signal) => {
    const status = await api.status(projectId, LOG_LINES, signal);
    if (signal.aborted) return false; // the view was left while the answer came
    const run = status.run;
    const active = renderRun(status, run && metricsOf === run.id ? metrics : null);
    cancelTarget = run && { projectId, run, name: status.project_name, poller };
    if (run && run.phase === "Succeeded" && metricsOf !== run.id) {
      metrics = await loadMetrics(signal);
      metricsOf = run.id;
      if (signal.aborted) return false;
      renderRun(status, metrics);
    }
    return active ? ACTIVE_EVERY_MS : ENDED_EVERY_MS;
  });
  return poller;
}

// -- cancel --------------------------------------------------------------------------------
async function onCancel() {
  const target = cancelTarget;
  if (!target) return;
  const question = `Cancel training run ${target.run.name} of ${target.name}? `
    + "It stops now and its progress is lost.";
  if (!window.confirm(question)) return;
  const button = byId("cancel-run");
  button.disabled = true;
  try {
    await api.cancel(target.projectId);
    notice(`Training run ${target.run.name} cancelled.`);
    target.poller.now();
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken(error.message);
      return;
    }
    notice(`Cancel refused: ${error.message}`);
    button.disabled = false;
  }
}

// -- start ---------------------------------------------------------------------------------
function start() {
  byId("token-form").addEventListener("submit", onTokenSubmitted);
  byId("forget-token").addEventListener("click", () => askForToken());
  byId("cancel-run").addEventListener("click", onCancel);
  window.addEventListener("hashchange", route);
  route();
}

start();
