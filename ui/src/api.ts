// The REST API, called with the credential the user typed at sign-in. The credential lives in this
// tab's sessionStorage only (gone when the tab closes); the page itself never holds a secret.

const KEY = "udop.credential";

/** Where the API is: the folder above /ui/ (so a proxy's or a stage's path prefix is kept). */
export const apiBase: string = location.pathname.replace(/ui\/[^/]*$/, "").replace(/\/?$/, "/");

export function credential(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setCredential(value: string | null): void {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** API keys (udop_<id>_<secret>) go in X-API-Key, anything else is a bearer token. */
export function authHeaders(value: string): Record<string, string> {
  const v = value.trim();
  if (/^udop_/.test(v)) return { "X-API-Key": v };
  return { Authorization: `Bearer ${v.replace(/^Bearer\s+/i, "")}` };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

type Listener = () => void;
const unauthorised: Listener[] = [];
/** Called when the API answers 401: the credential expired or was revoked. */
export function onUnauthorised(f: Listener): void {
  unauthorised.push(f);
}

async function call(method: string, path: string, body?: unknown, as: "json" | "text" = "json"): Promise<any> {
  const cred = credential();
  const headers: Record<string, string> = { Accept: as === "json" ? "application/json" : "text/plain" };
  if (cred) Object.assign(headers, authHeaders(cred));
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(apiBase + path.replace(/^\//, ""), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "the server did not answer; is udop serve running?");
  }
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      const problem = await res.json();
      if (problem && typeof problem.detail === "string") detail = problem.detail;
    } catch {
      /* not JSON: keep the status line */
    }
    if (res.status === 401) unauthorised.forEach((f) => f());
    throw new ApiError(res.status, detail);
  }
  if (res.status === 204) return null;
  return as === "json" ? res.json() : res.text();
}

export const get = <T>(path: string): Promise<T> => call("GET", path);
export const getText = (path: string): Promise<string> => call("GET", path, undefined, "text");
export const post = <T>(path: string, body?: unknown): Promise<T> => call("POST", path, body ?? {});

export const q = (params: Record<string, string | number | null | undefined>): string => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") s.set(k, String(v));
  const text = s.toString();
  return text ? `?${text}` : "";
};

// ---- the API's shapes (docs/api.md) ----
export type Role = "viewer" | "operator" | "admin";
export interface Identity {
  subject: string;
  role: Role | null;
  kind: string;
}
export interface PipelineSummary {
  name: string;
  created_at: string;
  latest_version: number | null;
}
export interface PipelineVersion {
  version: number;
  content_hash: string;
  created_at: string;
  definition: Definition | null;
}
export interface PipelineDetail extends PipelineSummary {
  versions: PipelineVersion[];
}
export interface ParamSpec {
  type?: "str" | "int" | "float" | "bool" | "date" | "datetime";
  default?: unknown;
  description?: string | null;
  required?: boolean | null;
}
export interface TaskSpec {
  id: string;
  type: string;
  description?: string;
  depends_on?: string[];
}
export interface Definition {
  metadata: { name: string; description?: string; owner?: string; tags?: string[] };
  spec: {
    params?: Record<string, ParamSpec>;
    schedule?: { cron?: string | null; rate?: string | null; timezone?: string; enabled?: boolean } | null;
    tasks: TaskSpec[];
  };
}
export type RunState = "pending" | "running" | "succeeded" | "failed" | "cancelled";
export interface Attempt {
  number: number;
  state: string;
  started_at: string;
  ended_at: string | null;
  error_type: string | null;
  error_message: string | null;
}
export interface TaskRun {
  task_id: string;
  state: string;
  started_at: string | null;
  ended_at: string | null;
  error_type: string | null;
  error_message: string | null;
  result: { value?: unknown; metrics?: Record<string, unknown>; [k: string]: unknown } | null;
  attempts: Attempt[];
}
export interface RunSummary {
  id: string;
  pipeline: string;
  pipeline_version: number;
  state: RunState;
  executor: string;
  params: Record<string, unknown>;
  logical_date: string;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  error: string | null;
  trigger: "cli" | "api" | "schedule" | "trigger" | "backfill" | null;
}
export interface RunDetail extends RunSummary {
  tasks: TaskRun[];
}
export interface RunPage {
  items: RunSummary[];
  next_cursor: string | null;
}
export interface Lineage {
  task_id: string;
  inputs: string[];
  output_uri: string | null;
  rows: number | null;
  bytes: number | null;
  schema_fingerprint: string | null;
  recorded_at: string;
  columns: Record<string, string[][]>;
}
export interface Check {
  task_id: string;
  rule: string;
  severity: string;
  passed: boolean;
  failing_rows: number;
  sample: Record<string, unknown>[];
  message: string;
}
export interface LineageHop {
  dataset: string;
  depth: number;
  via_dataset: string;
  pipeline: string;
  run_id: string;
  task_id: string;
}
export interface LineageGraph {
  dataset: string;
  direction: "upstream" | "downstream";
  datasets: LineageHop[];
}

export const canOperate = (role: Role | null | undefined): boolean => role === "operator" || role === "admin";
