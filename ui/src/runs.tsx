import { useMemo, useRef, useState } from "preact/hooks";
import {
  type Check,
  type Definition,
  type Identity,
  type Lineage,
  type PipelineDetail,
  type PipelineSummary,
  type RunDetail,
  type RunPage as RunPageBody,
  type TaskRun,
  canOperate,
  get,
  getText,
  post,
  q,
} from "./api";
import { Dag, type DagNode } from "./dag";
import { ErrorLine, Loading, StateBadge, TERMINAL, fmtDuration, fmtTime, href, usePoll } from "./util";

const RUN_STATES = ["pending", "running", "succeeded", "failed", "cancelled"];
// how a run was started (the API's trigger filter)
const TRIGGERS = ["cli", "api", "schedule", "trigger", "backfill"];
const PAGE = 50;

export function RunsPage(props: { query: URLSearchParams }) {
  const pipeline = props.query.get("pipeline") ?? "";
  const state = props.query.get("state") ?? "";
  const date = props.query.get("date") ?? "";
  const trigger = props.query.get("trigger") ?? "";
  const cursor = props.query.get("cursor") ?? "";
  const [history, setHistory] = useState<string[]>([]);
  const pipelines = usePoll(() => get<PipelineSummary[]>("pipelines"), [], null);
  const page = usePoll(
    () => get<RunPageBody>(`runs${q({ pipeline, state, logical_date: date, trigger, limit: PAGE, cursor })}`),
    [pipeline, state, date, trigger, cursor],
    3000, // live: the page is read again every 3 s
  );
  const go = (next: Record<string, string>) => {
    const merged: Record<string, string> = { pipeline, state, date, trigger, cursor: "", ...next };
    location.hash = href("runs", merged);
  };
  const items = page.data?.items ?? [];
  return (
    <section>
      <h1>Runs</h1>
      <form class="row filters" aria-label="filter runs" onSubmit={(e) => e.preventDefault()}>
        <label for="f-pipeline">
          pipeline{" "}
          <select id="f-pipeline" value={pipeline} onChange={(e) => { setHistory([]); go({ pipeline: (e.target as HTMLSelectElement).value }); }}>
            <option value="">all</option>
            {(pipelines.data ?? []).map((p) => (
              <option key={p.name} value={p.name}>
                {p.name}
              </option>
            ))}
          </select>
        </label>
        <label for="f-state">
          state{" "}
          <select id="f-state" value={state} onChange={(e) => { setHistory([]); go({ state: (e.target as HTMLSelectElement).value }); }}>
            <option value="">all</option>
            {RUN_STATES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <label for="f-trigger">
          started by{" "}
          <select id="f-trigger" value={trigger} onChange={(e) => { setHistory([]); go({ trigger: (e.target as HTMLSelectElement).value }); }}>
            <option value="">all</option>
            {TRIGGERS.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </label>
        <label for="f-date">
          logical date{" "}
          <input id="f-date" type="date" value={date} onChange={(e) => { setHistory([]); go({ date: (e.target as HTMLInputElement).value }); }} />
        </label>
      </form>
      {date ? <p class="hint">Runs whose logical date is {date} at 00:00 UTC (the date a schedule or backfill gives a run).</p> : null}
      <ErrorLine error={page.error} />
      {!page.data ? (
        <Loading />
      ) : (
        <table data-testid="runs">
          <thead>
            <tr>
              <th scope="col">run</th>
              <th scope="col">pipeline</th>
              <th scope="col">state</th>
              <th scope="col">logical date</th>
              <th scope="col">created</th>
              <th scope="col">duration</th>
              <th scope="col">started by</th>
              <th scope="col">executor</th>
            </tr>
          </thead>
          <tbody>
            {items.map((r) => (
              <tr key={r.id} data-run={r.id}>
                <td>
                  <a href={href(`runs/${r.id}`)}>{r.id}</a>
                </td>
                <td>
                  {r.pipeline} <span class="muted">v{r.pipeline_version}</span>
                </td>
                <td>
                  <StateBadge state={r.state} />
                </td>
                <td>{fmtTime(r.logical_date)}</td>
                <td>{fmtTime(r.created_at)}</td>
                <td>{fmtDuration(r.started_at, r.ended_at)}</td>
                <td data-testid="trigger">{r.trigger ?? "–"}</td>
                <td>{r.executor}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <nav class="row pager" aria-label="pages">
        <button type="button" class="secondary" disabled={!cursor} onClick={() => { setHistory([]); go({}); }}>
          Newest
        </button>
        <button
          type="button"
          class="secondary"
          disabled={!history.length}
          onClick={() => {
            const back = history[history.length - 1];
            setHistory(history.slice(0, -1));
            go({ cursor: back });
          }}
        >
          Newer
        </button>
        <button
          type="button"
          class="secondary"
          disabled={!page.data?.next_cursor}
          onClick={() => {
            setHistory([...history, cursor]);
            go({ cursor: page.data?.next_cursor ?? "" });
          }}
        >
          Older
        </button>
      </nav>
    </section>
  );
}

function Gantt(props: { run: RunDetail; onSelect: (id: string) => void }) {
  const tasks = props.run.tasks.filter((t) => t.started_at).sort((a, b) => Date.parse(a.started_at!) - Date.parse(b.started_at!));
  if (!tasks.length) return <p class="muted">No task has started yet.</p>;
  const start = Math.min(...tasks.map((t) => Date.parse(t.started_at!)));
  const now = Date.now();
  const end = Math.max(...tasks.map((t) => (t.ended_at ? Date.parse(t.ended_at) : now)), start + 1);
  const W = 640;
  const LABEL = 180;
  const ROW = 18;
  const x = (iso: string | null) => LABEL + ((iso ? Date.parse(iso) : now) - start) * (W / (end - start));
  return (
    <div class="gantt" tabIndex={0} aria-label="timeline">
      <svg width={LABEL + W + 10} height={tasks.length * ROW + 20} role="img" aria-label={`timeline of ${tasks.length} tasks`}>
        <text x={LABEL} y={12} class="axis">
          0
        </text>
        <text x={LABEL + W} y={12} class="axis" text-anchor="end">
          {fmtDuration(new Date(start).toISOString(), new Date(end).toISOString())}
        </text>
        {tasks.map((t, i) => {
          const y = 18 + i * ROW;
          const attempts = t.attempts.length ? t.attempts : [{ number: 1, state: t.state, started_at: t.started_at!, ended_at: t.ended_at }];
          return (
            <g key={t.task_id} onClick={() => props.onSelect(t.task_id)} class="gantt-row">
              <text x={LABEL - 6} y={y + 11} text-anchor="end" class="label">
                {t.task_id.length > 24 ? `${t.task_id.slice(0, 23)}…` : t.task_id}
              </text>
              {attempts.map((a) => (
                <rect
                  key={a.number}
                  x={x(a.started_at)}
                  y={y}
                  width={Math.max(2, x(a.ended_at) - x(a.started_at))}
                  height={ROW - 5}
                  class={`bar state-${a.state}`}
                >
                  <title>
                    {t.task_id} attempt {a.number}: {a.state}, {fmtDuration(a.started_at, a.ended_at)}
                  </title>
                </rect>
              ))}
            </g>
          );
        })}
      </svg>
    </div>
  );
}

function Json(props: { value: unknown; label: string }) {
  return (
    <pre class="json" tabIndex={0} aria-label={props.label}>
      {JSON.stringify(props.value, null, 2)}
    </pre>
  );
}

function TaskPanel(props: {
  run: RunDetail;
  task: TaskRun;
  lineage: Lineage[];
  checks: Check[];
  // set only for roles that may retry (operator, admin)
  onRetry?: (taskId: string) => void;
  busy?: boolean;
}) {
  const { run, task } = props;
  const [logs, setLogs] = useState<string | null>(null);
  const [logError, setLogError] = useState<string | null>(null);
  const showLogs = async () => {
    setLogError(null);
    try {
      setLogs(await getText(`runs/${encodeURIComponent(run.id)}/tasks/${encodeURIComponent(task.task_id)}/logs`));
    } catch (e) {
      setLogs(null);
      setLogError((e as Error).message);
    }
  };
  const lineage = props.lineage.filter((l) => l.task_id === task.task_id);
  const checks = props.checks.filter((c) => c.task_id === task.task_id);
  return (
    <section class="panel" aria-labelledby="task-title" data-testid="task-panel">
      <h2 id="task-title">
        Task {task.task_id} <StateBadge state={task.state} />
      </h2>
      <dl class="facts">
        <dt>started</dt>
        <dd>{fmtTime(task.started_at)}</dd>
        <dt>ended</dt>
        <dd>{fmtTime(task.ended_at)}</dd>
        <dt>duration</dt>
        <dd>{fmtDuration(task.started_at, task.ended_at)}</dd>
      </dl>
      {props.onRetry && TERMINAL.has(run.state) ? (
        <div class="row actions">
          <button
            type="button"
            disabled={props.busy}
            onClick={() => props.onRetry!(task.task_id)}
            title="Run this task and every task downstream of it again, in this run"
          >
            Retry from here
          </button>
        </div>
      ) : null}
      {task.error_message ? (
        <p class="error" data-testid="task-error">
          <strong>{task.error_type ?? "error"}</strong>: {task.error_message}
        </p>
      ) : null}
      <h3>Attempts</h3>
      {task.attempts.length ? (
        <table>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">state</th>
              <th scope="col">started</th>
              <th scope="col">duration</th>
              <th scope="col">error</th>
            </tr>
          </thead>
          <tbody>
            {task.attempts.map((a) => (
              <tr key={a.number}>
                <td>{a.number}</td>
                <td>
                  <StateBadge state={a.state} />
                </td>
                <td>{fmtTime(a.started_at)}</td>
                <td>{fmtDuration(a.started_at, a.ended_at)}</td>
                <td>{a.error_message ? `${a.error_type ?? "error"}: ${a.error_message}` : "–"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">No attempt yet.</p>
      )}
      <h3>Logs</h3>
      <button type="button" class="secondary" onClick={showLogs}>
        {logs === null ? "Show logs" : "Reload logs"}
      </button>
      <ErrorLine error={logError} />
      {logs !== null ? (
        <pre class="logs" data-testid="logs" tabIndex={0} aria-label={`logs of ${task.task_id}`}>
          {logs}
        </pre>
      ) : null}
      {task.result && (task.result.value != null || Object.keys(task.result.metrics ?? {}).length) ? (
        <>
          <h3>Value and metrics</h3>
          <Json
            value={{ value: task.result.value, metrics: task.result.metrics }}
            label={`value and metrics of ${task.task_id}`}
          />
        </>
      ) : null}
      {lineage.length ? (
        <>
          <h3>Output and lineage</h3>
          <table>
            <thead>
              <tr>
                <th scope="col">output</th>
                <th scope="col">rows</th>
                <th scope="col">bytes</th>
                <th scope="col">schema</th>
                <th scope="col">inputs</th>
              </tr>
            </thead>
            <tbody>
              {lineage.map((l, i) => (
                <tr key={i}>
                  <td>{l.output_uri ? <a href={href("lineage", { dataset: l.output_uri })}>{l.output_uri}</a> : "–"}</td>
                  <td data-testid="rows">{l.rows ?? "–"}</td>
                  <td>{l.bytes ?? "–"}</td>
                  <td>
                    <code>{l.schema_fingerprint ? l.schema_fingerprint.slice(0, 16) : "–"}</code>
                  </td>
                  <td>
                    {l.inputs.map((u) => (
                      <div key={u}>
                        <a href={href("lineage", { dataset: u })}>{u}</a>
                      </div>
                    ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {lineage.some((l) => Object.keys(l.columns).length) ? (
            <>
              <h4>Columns (schema and where each comes from)</h4>
              <table>
                <thead>
                  <tr>
                    <th scope="col">column</th>
                    <th scope="col">derived from</th>
                  </tr>
                </thead>
                <tbody>
                  {lineage.flatMap((l) =>
                    Object.entries(l.columns).map(([col, from]) => (
                      <tr key={col}>
                        <td>{col}</td>
                        <td>{from.map((f) => f.join(".")).join(", ") || "–"}</td>
                      </tr>
                    )),
                  )}
                </tbody>
              </table>
            </>
          ) : null}
        </>
      ) : null}
      {checks.length ? (
        <>
          <h3>Checks</h3>
          {checks.map((c, i) => (
            <div key={i} class="check" data-testid="check">
              <p>
                <span class={`badge state-${c.passed ? "succeeded" : c.severity === "warn" ? "pending" : "failed"}`}>
                  {c.passed ? "passed" : c.severity === "warn" ? "warning" : "failed"}
                </span> <code>{c.rule}</code>{" "}
                ({c.severity}): {c.message}
                {c.failing_rows ? ` (${c.failing_rows} failing rows)` : ""}
              </p>
              {c.sample.length ? (
                <table aria-label={`sample of rows failing ${c.rule} (masked)`}>
                  <thead>
                    <tr>
                      {Object.keys(c.sample[0]).map((k) => (
                        <th scope="col" key={k}>
                          {k}
                        </th>
                      ))}
                    </tr>
                  </thead>
                  <tbody>
                    {c.sample.map((row, j) => (
                      <tr key={j}>
                        {Object.keys(c.sample[0]).map((k) => (
                          <td key={k}>{String(row[k] ?? "")}</td>
                        ))}
                      </tr>
                    ))}
                  </tbody>
                </table>
              ) : null}
            </div>
          ))}
        </>
      ) : null}
    </section>
  );
}

function versionDefinition(detail: PipelineDetail, version: number): Definition | null {
  return detail.versions.find((v) => v.version === version)?.definition ?? null;
}

export function RunPage(props: { id: string; me: Identity; task?: string | null }) {
  const enc = encodeURIComponent(props.id);
  const [selected, setSelected] = useState<string | null>(props.task ?? null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // live until the run is over; after a cancel or resume, live for a while whatever the state says (the
  // executor may not have moved the run yet when the next read arrives)
  const followUntil = useRef(0);
  const run = usePoll(() => get<RunDetail>(`runs/${enc}`), [props.id], (d) =>
    d && TERMINAL.has(d.state) && Date.now() > followUntil.current ? null : 1500,
  );
  const r = run.data;
  const terminal = r ? TERMINAL.has(r.state) : false;
  const def = usePoll(
    async () => (r ? versionDefinition(await get<PipelineDetail>(`pipelines/${encodeURIComponent(r.pipeline)}`), r.pipeline_version) : null),
    [r?.pipeline, r?.pipeline_version],
    null,
  );
  const extra = usePoll(
    () => Promise.all([get<Lineage[]>(`runs/${enc}/lineage`), get<Check[]>(`runs/${enc}/checks`)]),
    [props.id, r?.state],
    null,
  );
  const nodes: DagNode[] | null = useMemo(() => {
    if (def.data === null && !def.error) return null; // the definition's edges first: one layout, not two
    const tasks = r?.tasks ?? [];
    const spec = def.data?.spec.tasks ?? [];
    const known = new Set(spec.map((t) => t.id));
    return [
      ...spec.map((t) => ({ id: t.id, deps: t.depends_on ?? [] })),
      ...tasks.filter((t) => !known.has(t.task_id)).map((t) => ({ id: t.task_id, deps: [] })),
    ];
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [def.data, def.error, r?.tasks.length]);
  if (!r) return run.error ? <ErrorLine error={run.error} /> : <Loading />;
  const states = Object.fromEntries(r.tasks.map((t) => [t.task_id, t.state]));
  const act = async (what: string) => {
    setBusy(true);
    setActionError(null);
    try {
      await post(`runs/${enc}/${what}`);
      followUntil.current = Date.now() + 15000;
      run.reload();
    } catch (e) {
      setActionError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };
  const operator = canOperate(props.me.role);
  const task = r.tasks.find((t) => t.task_id === selected) ?? null;
  return (
    <section>
      <h1>
        Run {r.id} <StateBadge state={r.state} />
      </h1>
      <p class="live" aria-live="polite" data-testid="run-state" data-state={r.state}>
        {terminal ? `Run ${r.state}.` : `Run ${r.state}; updating live.`}
      </p>
      <dl class="facts">
        <dt>pipeline</dt>
        <dd>
          <a href={href(`pipelines/${encodeURIComponent(r.pipeline)}`)}>{r.pipeline}</a> v{r.pipeline_version}
        </dd>
        <dt>logical date</dt>
        <dd>{fmtTime(r.logical_date)}</dd>
        <dt>started</dt>
        <dd>{fmtTime(r.started_at)}</dd>
        <dt>duration</dt>
        <dd>{fmtDuration(r.started_at, r.ended_at)}</dd>
        <dt>started by</dt>
        <dd>{r.trigger ?? "–"}</dd>
        <dt>executor</dt>
        <dd>{r.executor}</dd>
        <dt>params</dt>
        <dd>
          <code>{JSON.stringify(r.params)}</code>
        </dd>
      </dl>
      {r.error ? <p class="error">{r.error}</p> : null}
      {operator ? (
        <div class="row actions">
          {r.state === "pending" || r.state === "running" ? (
            <button type="button" class="danger" disabled={busy} onClick={() => act("cancel")}>
              Cancel run
            </button>
          ) : null}
          {r.state === "failed" || r.state === "cancelled" ? (
            <button type="button" disabled={busy} onClick={() => act("resume")}>
              Resume run
            </button>
          ) : null}
        </div>
      ) : null}
      <ErrorLine error={actionError} />
      <h2>Graph</h2>
      <p class="hint">Select a task (click, or Tab to it and press Enter) for its attempts, logs, output and checks.</p>
      {nodes ? (
        <Dag label={`tasks of run ${r.id}`} nodes={nodes} states={states} selected={selected} onSelect={setSelected} />
      ) : (
        <p aria-live="polite">Reading the graph…</p>
      )}
      {task ? (
        <TaskPanel
          run={r}
          task={task}
          lineage={extra.data?.[0] ?? []}
          checks={extra.data?.[1] ?? []}
          onRetry={operator ? (id) => act(`tasks/${encodeURIComponent(id)}/retry`) : undefined}
          busy={busy}
        />
      ) : null}
      <h2>Timeline</h2>
      <Gantt run={r} onSelect={setSelected} />
    </section>
  );
}
