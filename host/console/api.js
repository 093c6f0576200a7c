// The admin API, with the token kept for this tab only (sessionStorage):
// never in a URL or a cookie.

const KEY = "eventflow-token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error the API answered with: its status and its message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API; resolves to the JSON body or rejects with an ApiError
 *  carrying the API's own explanation. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get() ?? ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the router did not answer (${e.message})`);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const why = data && typeof data.error === "string" ? data.error : res.statusText;
    throw new ApiError(res.status, `${res.status}: ${why}`);
  }
  return data;
}

/** One path segment. */
export const seg = encodeURIComponent;
