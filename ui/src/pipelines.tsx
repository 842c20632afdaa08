import { diffLines } from "diff";
import { useState } from "preact/hooks";
import {
  type Definition,
  type Identity,
  type ParamSpec,
  type PipelineDetail,
  type PipelineSummary,
  type RunPage,
  canOperate,
  get,
  post,
  q,
} from "./api";
import { Dag } from "./dag";
import { ErrorLine, Loading, fmtTime, href, usePoll } from "./util";

interface Row {
  summary: PipelineSummary;
  definition: Definition | null;
  runs: RunPage["items"];
}

const latestDefinition = (d: PipelineDetail): Definition | null =>
  d.versions.length ? d.versions[d.versions.length - 1].definition : null;

function schedule(def: Definition | null): string {
  const s = def?.spec.schedule;
  if (!s) return "–";
  const when = s.cron ? `cron ${s.cron}` : s.rate ? `every ${s.rate}` : "–";
  return `${when}${s.timezone && s.timezone !== "UTC" ? ` (${s.timezone})` : ""}${s.enabled === false ? ", paused" : ""}`;
}

export function RunStrip(props: { runs: RunPage["items"] }) {
  if (!props.runs.length) return <span class="muted">no runs</span>;
  return (
    <ul class="strip" aria-label="last runs, newest first">
      {props.runs.map((r) => (
        <li key={r.id}>
          <a href={href(`runs/${r.id}`)} class={`dot state-${r.state}`} title={`${r.id}: ${r.state}`}>
            <span class="sr">
              run {r.id} {r.state}
            </span>
          </a>
        </li>
      ))}
    </ul>
  );
}

export function PipelinesPage() {
  const { data, error } = usePoll<Row[]>(
    async () => {
      const list = await get<PipelineSummary[]>("pipelines");
      return Promise.all(
        list.map(async (summary) => {
          const [detail, runs] = await Promise.all([
            get<PipelineDetail>(`pipelines/${encodeURIComponent(summary.name)}`),
            get<RunPage>(`runs${q({ pipeline: summary.name, limit: 10 })}`),
          ]);
          return { summary, definition: latestDefinition(detail), runs: runs.items };
        }),
      );
    },
    [],
    10000,
  );
  return (
    <section>
      <h1>Pipelines</h1>
      <ErrorLine error={error} />
      {!data ? (
        <Loading />
      ) : !data.length ? (
        <p>No pipeline is registered yet: <code>POST /pipelines</code> or <code>udop register</code>.</p>
      ) : (
        <table data-testid="pipelines">
          <thead>
            <tr>
              <th scope="col">name</th>
              <th scope="col">owner</th>
              <th scope="col">tags</th>
              <th scope="col">schedule</th>
              <th scope="col">version</th>
              <th scope="col">last runs</th>
            </tr>
          </thead>
          <tbody>
            {data.map((row) => (
              <tr key={row.summary.name}>
                <td>
                  <a href={href(`pipelines/${encodeURIComponent(row.summary.name)}`)}>{row.summary.name}</a>
                </td>
                <td>{row.definition?.metadata.owner ?? "–"}</td>
                <td>
                  {(row.definition?.metadata.tags ?? []).map((t) => (
                    <span class="tag" key={t}>
                      {t}
                    </span>
                  ))}
                </td>
                <td>{schedule(row.definition)}</td>
                <td>{row.summary.latest_version ?? "–"}</td>
                <td>
                  <RunStrip runs={row.runs} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function VersionDiff(props: { detail: PipelineDetail }) {
  const versions = props.detail.versions;
  const last = versions.length - 1;
  const [a, setA] = useState(Math.max(0, last - 1));
  const [b, setB] = useState(last);
  if (versions.length < 2) return <p class="muted">One version only: nothing to compare.</p>;
  const text = (i: number) => `${JSON.stringify(versions[i].definition, null, 2)}\n`;
  const parts = diffLines(text(a), text(b));
  const pick = (label: string, value: number, set: (n: number) => void, id: string) => (
    <label for={id}>
      {label}{" "}
      <select id={id} value={value} onChange={(e) => set(Number((e.target as HTMLSelectElement).value))}>
        {versions.map((v, i) => (
          <option key={v.version} value={i}>
            v{v.version} ({fmtTime(v.created_at)})
          </option>
        ))}
      </select>
    </label>
  );
  return (
    <div>
      <div class="row">
        {pick("from", a, setA, "diff-from")}
        {pick("to", b, setB, "diff-to")}
      </div>
      <pre class="diff" data-testid="diff" tabIndex={0} aria-label="definition diff">
        {parts.map((p, i) => (
          <span key={i} class={p.added ? "add" : p.removed ? "del" : "same"}>
            {p.value
              .replace(/\n$/, "")
              .split("\n")
              .map((line) => `${p.added ? "+ " : p.removed ? "- " : "  "}${line}\n`)
              .join("")}
          </span>
        ))}
      </pre>
    </div>
  );
}

interface RunAccepted {
  run_id: string;
}

function paramValue(spec: ParamSpec, raw: string | boolean): unknown {
  switch (spec.type ?? "str") {
    case "int":
      return Number.parseInt(String(raw), 10);
    case "float":
      return Number.parseFloat(String(raw));
    case "bool":
      return Boolean(raw);
    case "datetime":
      return new Date(String(raw)).toISOString();
    default:
      return String(raw);
  }
}

function TriggerForm(props: { name: string; params: Record<string, ParamSpec> }) {
  const entries = Object.entries(props.params);
  const [values, setValues] = useState<Record<string, string | boolean>>(() =>
    Object.fromEntries(
      entries.map(([k, s]) => [
        k,
        (s.type ?? "str") === "bool" ? Boolean(s.default) : s.default === null || s.default === undefined ? "" : String(s.default),
      ]),
    ),
  );
  const [logical, setLogical] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  async function submit(ev: Event) {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const params: Record<string, unknown> = {};
      for (const [k, s] of entries) {
        const v = values[k];
        if (v === "" && (s.type ?? "str") !== "str") continue; // empty: the default applies
        params[k] = paramValue(s, v);
      }
      const body: Record<string, unknown> = { params };
      if (logical) body.logical_date = new Date(logical).toISOString();
      const accepted = await post<RunAccepted>(`pipelines/${encodeURIComponent(props.name)}/runs`, body);
      location.hash = href(`runs/${accepted.run_id}`);
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  }
  const input = (k: string, s: ParamSpec) => {
    const id = `param-${k}`;
    const type = s.type ?? "str";
    const required = s.required ?? (s.default === null || s.default === undefined);
    const set = (v: string | boolean) => setValues({ ...values, [k]: v });
    const common = { id, name: k, required: type === "bool" ? undefined : required };
    let control;
    if (type === "bool")
      control = <input {...common} type="checkbox" checked={Boolean(values[k])} onChange={(e) => set((e.target as HTMLInputElement).checked)} />;
    else
      control = (
        <input
          {...common}
          type={type === "int" || type === "float" ? "number" : type === "date" ? "date" : type === "datetime" ? "datetime-local" : "text"}
          step={type === "float" ? "any" : type === "int" ? "1" : undefined}
          value={String(values[k] ?? "")}
          onInput={(e) => set((e.target as HTMLInputElement).value)}
        />
      );
    return (
      <div class="field" key={k}>
        <label for={id}>
          {k} <span class="muted">({type}{required ? ", required" : ""})</span>
        </label>
        {control}
        {s.description ? <span class="hint">{s.description}</span> : null}
      </div>
    );
  };
  return (
    <form onSubmit={submit} aria-label="trigger a run" data-testid="trigger">
      {entries.map(([k, s]) => input(k, s))}
      <div class="field">
        <label for="logical-date">
          logical date <span class="muted">(optional, default now)</span>
        </label>
        <input id="logical-date" type="datetime-local" value={logical} onInput={(e) => setLogical((e.target as HTMLInputElement).value)} />
      </div>
      <button type="submit" disabled={busy}>
        Trigger run
      </button>
      <ErrorLine error={error} />
    </form>
  );
}

export function PipelinePage(props: { name: string; me: Identity }) {
  const enc = encodeURIComponent(props.name);
  const { data, error } = usePoll(
    () => Promise.all([get<PipelineDetail>(`pipelines/${enc}`), get<RunPage>(`runs${q({ pipeline: props.name, limit: 20 })}`)]),
    [props.name],
    10000,
  );
  if (!data) return error ? <ErrorLine error={error} /> : <Loading />;
  const [detail, runs] = data;
  const def = latestDefinition(detail);
  return (
    <section>
      <h1>Pipeline {detail.name}</h1>
      <ErrorLine error={error} />
      <dl class="facts">
        <dt>owner</dt>
        <dd>{def?.metadata.owner ?? "–"}</dd>
        <dt>tags</dt>
        <dd>{(def?.metadata.tags ?? []).join(", ") || "–"}</dd>
        <dt>schedule</dt>
        <dd>{schedule(def)}</dd>
        <dt>latest version</dt>
        <dd>{detail.latest_version ?? "–"}</dd>
      </dl>
      {def?.metadata.description ? <p>{def.metadata.description}</p> : null}
      <h2>Graph</h2>
      {def ? (
        <Dag label={`tasks of ${detail.name}`} nodes={def.spec.tasks.map((t) => ({ id: t.id, deps: t.depends_on ?? [] }))} />
      ) : null}
      {canOperate(props.me.role) && def ? (
        <>
          <h2>Trigger a run</h2>
          <TriggerForm name={detail.name} params={def.spec.params ?? {}} />
        </>
      ) : null}
      <h2>Recent runs</h2>
      <RunStrip runs={runs.items} />
      <p>
        <a href={href("runs", { pipeline: detail.name })}>All runs of {detail.name}</a>
      </p>
      <h2>Versions</h2>
      <ul>
        {detail.versions.map((v) => (
          <li key={v.version}>
            v{v.version}, {fmtTime(v.created_at)}, <code>{v.content_hash.slice(0, 12)}</code>
          </li>
        ))}
      </ul>
      <h3>Differences between two versions</h3>
      <VersionDiff detail={detail} />
    </section>
  );
}
