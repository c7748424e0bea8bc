// How numbers and times read on the page.

const DASH = "—";

export function percent(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)}%` : DASH;
}

export function number(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : DASH;
}

export function rate(value) {
  return typeof value === "number" ? value.toFixed(0) : DASH;
}

export function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return DASH;
  const total = Math.round(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = String(total % 60).padStart(2, "0");
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  return minutes ? `${minutes}m ${rest}s` : `${total}s`;
}

export function when(iso) {
  if (!iso) return DASH;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? DASH : date.toLocaleString();
}

// How long a run has trained: start to finish, or start to now while it goes on.
export function runSeconds(run, now = Date.now()) {
  if (!run || !run.started_at) return null;
  const started = Date.parse(run.started_at);
  const ended = run.finished_at ? Date.parse(run.finished_at) : now;
  return Number.isNaN(started) || Number.isNaN(ended) ? null : Math.max(0, (ended - started) / 1000);
}

export const dash = DASH;
