// The API as the page calls it. The bearer token is kept in sessionStorage (this tab only)
// and travels only in the Authorization header: never in a URL, never written to the console.

const TOKEN_KEY = "training-agent.token";
// Relative to /ui/, so the page keeps working behind a path prefix.
const BASE = "../agents/training";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

async function call(path, { method = "GET", signal } = {}) {
  const value = token.get();
  if (!value) throw new Unauthorized("a token is needed");
  const response = await fetch(`${BASE}${path}`, {
    method,
    signal,
    headers: { Authorization: `Bearer ${value}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const problem = (body && body.error) || {};
  if (response.status === 401) {
    token.clear();
    throw new Unauthorized(problem.message || "the token was not accepted");
  }
  if (!response.ok) {
    throw new ApiError(response.status, problem.code || "http_error",
      problem.message || `the API answered ${response.status}`);
  }
  return body;
}

const id = (projectId) => encodeURIComponent(projectId);

export const api = {
  runs: (limit, signal) => call(`/runs?limit=${limit}`, { signal }),
  status: (projectId, logs, signal) => call(`/status/${id(projectId)}?logs=${logs}`, { signal }),
  metrics: (projectId, signal) => call(`/metrics/${id(projectId)}`, { signal }),
  cancel: (projectId) => call(`/cancel/${id(projectId)}`, { method: "POST" }),
};
