// The api client: the native routes (/v1) with the signed-in API token. The token lives in this
// tab's sessionStorage only (gone when the tab closes, never shared with other tabs, never in a
// cookie or localStorage). Every failure becomes an ApiError carrying the problem's detail.

const TOKEN_KEY = 'starling.console.token';

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

/** A failed api call: `status` is 0 when the api did not answer. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Percent-encodes one path segment. */
export const seg = encodeURIComponent;

/**
 * Calls `method /v1{path}`; `query` values may be arrays (repeated keys); `body` is sent as JSON.
 * Returns the parsed answer (null for 204), or throws an ApiError with the api's message.
 */
export async function api(method, path, { query, body, token } = {}) {
  const url = new URL(`/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    for (const one of Array.isArray(v) ? v : [v]) {
      if (one !== undefined && one !== null && one !== '') url.searchParams.append(k, String(one));
    }
  }
  const headers = { accept: 'application/json, application/problem+json' };
  const bearer = token ?? session.token;
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, null, `the api did not answer (${e.message})`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: shown as text below */ }
  if (!resp.ok) {
    const detail = data?.detail ?? data?.title ?? (text || resp.statusText);
    const code = data?.code ?? null;
    throw new ApiError(resp.status, code, `${detail} (HTTP ${resp.status}${code ? `, code ${code}` : ''})`);
  }
  return data;
}

/** Every item of a paged native list (`{items, nextCursor}`), following the cursor. */
export async function all(path, query = {}) {
  const items = [];
  let cursor;
  for (let pages = 0; pages < 100; pages += 1) {
    const page = await api('GET', path, { query: { ...query, cursor } });
    items.push(...page.items);
    if (!page.nextCursor) break;
    cursor = page.nextCursor;
  }
  return items;
}

/** What the signed-in role may do. */
export function can(role, needed) {
  const rank = { read: 0, write: 1, admin: 2 };
  return (rank[role] ?? -1) >= rank[needed];
}
