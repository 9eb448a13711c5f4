// Reads the control-plane API with the session cookie; a 401 sends the browser to sign in.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const LOGIN_PATH = "/dashboard/login";

export function apiUrl(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(name, value);
    }
  }
  return url.pathname + url.search;
}

export async function getJson(path, params = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, "unreachable", `the control plane is unreachable (${error.message})`);
  }
  if (response.status === 401) {
    window.location.assign(LOGIN_PATH);
    throw new ApiError(401, "authentication_failed", "the session ended; sign in again");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : {};
    const message = error.message || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, error.code || "http_error", `${path}: ${message}`);
  }
  return body;
}
