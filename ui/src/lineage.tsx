import { useState } from "preact/hooks";
import { type Lineage, type LineageGraph, type RunPage, get, q } from "./api";
import { Dag, type DagNode } from "./dag";
import { ErrorLine, Loading, href, usePoll } from "./util";

/** Datasets the latest runs read or wrote: a way in when no dataset is chosen yet. */
function RecentDatasets() {
  const { data, error } = usePoll(
    async () => {
      const runs = await get<RunPage>(`runs${q({ limit: 10 })}`);
      const all = await Promise.all(runs.items.map((r) => get<Lineage[]>(`runs/${encodeURIComponent(r.id)}/lineage`)));
      const seen = new Set<string>();
      for (const rows of all) for (const l of rows) for (const u of [...l.inputs, l.output_uri]) if (u) seen.add(u);
      return [...seen].sort();
    },
    [],
    null,
  );
  if (error) return <ErrorLine error={error} />;
  if (!data) return <Loading />;
  if (!data.length) return <p class="muted">The latest runs recorded no dataset.</p>;
  return (
    <>
      <h2>Datasets of the latest runs</h2>
      <ul data-testid="datasets">
        {data.map((u) => (
          <li key={u}>
            <a href={href("lineage", { dataset: u })}>{u}</a>
          </li>
        ))}
      </ul>
    </>
  );
}

export function LineagePage(props: { query: URLSearchParams }) {
  const dataset = props.query.get("dataset") ?? "";
  const direction = props.query.get("direction") === "downstream" ? "downstream" : "upstream";
  const [text, setText] = useState(dataset);
  const graph = usePoll(
    () => (dataset ? get<LineageGraph>(`lineage${q({ dataset, direction, depth: 50 })}`) : Promise.resolve(null)),
    [dataset, direction],
    null,
  );
  const go = (d: string, dir: string) => {
    location.hash = href("lineage", { dataset: d, direction: dir });
  };
  const g = graph.data;
  let nodes: DagNode[] = [];
  if (g) {
    const deps = new Map<string, Set<string>>([[g.dataset, new Set()]]);
    for (const h of g.datasets) {
      // upstream: h.dataset was read to make h.via_dataset; downstream: made from h.via_dataset
      const [from, to] = direction === "upstream" ? [h.dataset, h.via_dataset] : [h.via_dataset, h.dataset];
      if (!deps.has(from)) deps.set(from, new Set());
      if (!deps.has(to)) deps.set(to, new Set());
      deps.get(to)!.add(from);
    }
    nodes = [...deps].map(([id, d]) => ({ id, deps: [...d] }));
  }
  return (
    <section>
      <h1>Lineage</h1>
      <form
        class="row"
        aria-label="dataset lineage"
        onSubmit={(e) => {
          e.preventDefault();
          go(text.trim(), direction);
        }}
      >
        <label for="dataset">
          dataset{" "}
          <input id="dataset" type="text" size={60} value={text} placeholder="file:///…, s3://…, postgres://…" onInput={(e) => setText((e.target as HTMLInputElement).value)} />
        </label>
        <label for="direction">
          direction{" "}
          <select id="direction" value={direction} onChange={(e) => go(dataset || text.trim(), (e.target as HTMLSelectElement).value)}>
            <option value="upstream">upstream (what it came from)</option>
            <option value="downstream">downstream (what was made from it)</option>
          </select>
        </label>
        <button type="submit">Show</button>
      </form>
      {!dataset ? <RecentDatasets /> : null}
      <ErrorLine error={graph.error} />
      {dataset && !g && !graph.error ? <Loading /> : null}
      {g ? (
        <>
          <Dag label={`${direction} lineage of ${g.dataset}`} nodes={nodes} states={{ [g.dataset]: "selected" }} />
          {g.datasets.length ? (
            <table data-testid="lineage">
              <thead>
                <tr>
                  <th scope="col">dataset</th>
                  <th scope="col">depth</th>
                  <th scope="col">{direction === "upstream" ? "read to make" : "made from"}</th>
                  <th scope="col">by task</th>
                  <th scope="col">pipeline</th>
                  <th scope="col">run</th>
                </tr>
              </thead>
              <tbody>
                {g.datasets.map((h) => (
                  <tr key={`${h.dataset}<${h.via_dataset}`}>
                    <td>
                      <a href={href("lineage", { dataset: h.dataset, direction })}>{h.dataset}</a>
                    </td>
                    <td>{h.depth}</td>
                    <td>{h.via_dataset}</td>
                    <td>{h.task_id}</td>
                    <td>
                      <a href={href(`pipelines/${encodeURIComponent(h.pipeline)}`)}>{h.pipeline}</a>
                    </td>
                    <td>
                      <a href={href(`runs/${h.run_id}`, { task: h.task_id })}>{h.run_id}</a>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          ) : (
            <p class="muted">Nothing {direction} of this dataset is recorded.</p>
          )}
        </>
      ) : null}
    </section>
  );
}
