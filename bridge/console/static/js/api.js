// The admin API as the console calls it: the session cookie goes by itself (HttpOnly,
// SameSite=Strict); every state-changing call adds the CSRF token kept in memory only.

const session = { operator: null, csrf: null };

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && (body.message || body.reason || body.error);
    super(detail ? `${detail} (HTTP ${status})` : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

let onSignedOut = () => {};
export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function operator() {
  return session.operator;
}

export async function call(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (response.status === 401 && path !== "/console/session") {
    session.csrf = null;
    onSignedOut("Your session ended. Sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, headers: response.headers, status: response.status };
}

export const get = (path) => call("GET", path).then((r) => r.data);
export const post = (path, body, headers) => call("POST", path, body ?? {}, headers).then((r) => r.data);

export async function resume() {
  try {
    const { data } = await call("GET", "/console/session");
    Object.assign(session, data);
    return true;
  } catch {
    return false;
  }
}

export async function signIn(token, name) {
  const { data } = await call("POST", "/console/session", { token, operator: name || undefined });
  Object.assign(session, data);
  return data;
}

export async function signOut() {
  try {
    await call("DELETE", "/console/session");
  } finally {
    session.operator = session.csrf = null;
  }
}
