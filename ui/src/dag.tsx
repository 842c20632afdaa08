// A task graph laid out by dagre (no layout of our own) in a Web Worker: boxes coloured by state, edges as
// dagre routes them. The layout depends only on the tasks and their edges, so a run page that polls
// recolours the boxes without laying the graph out again.
import { useEffect, useState } from "preact/hooks";
import type { DagNode, Laid } from "./layout";

export type { DagNode };

let worker: Worker | null = null;
let next = 0;
const waiting = new Map<number, (r: { laid?: Laid; error?: string }) => void>();
const cache = new Map<string, Laid>();

function layoutOffThread(key: string, nodes: DagNode[]): Promise<Laid> {
  const hit = cache.get(key);
  if (hit) return Promise.resolve(hit);
  if (!worker) {
    worker = new Worker(new URL("layout-worker.js", import.meta.url));
    worker.onmessage = (ev: MessageEvent<{ id: number; laid?: Laid; error?: string }>) => {
      waiting.get(ev.data.id)?.(ev.data);
      waiting.delete(ev.data.id);
    };
  }
  const id = ++next;
  return new Promise((resolve, reject) => {
    waiting.set(id, (r) => {
      if (r.laid) {
        if (cache.size > 20) cache.clear();
        cache.set(key, r.laid);
        resolve(r.laid);
      } else reject(new Error(r.error ?? "layout failed"));
    });
    worker!.postMessage({ id, nodes });
  });
}

export function Dag(props: {
  nodes: DagNode[];
  states?: Record<string, string>;
  selected?: string | null;
  onSelect?: (id: string) => void;
  label: string;
}) {
  const key = props.nodes.map((n) => `${n.id}<${n.deps.join(",")}`).join(";");
  const [laid, setLaid] = useState<Laid | null>(cache.get(key) ?? null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let current = true;
    layoutOffThread(key, props.nodes).then(
      (l) => current && setLaid(l),
      (e: Error) => current && setError(e.message),
    );
    return () => {
      current = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
  if (error) return <p class="error">The graph could not be laid out: {error}</p>;
  if (!laid) return <p aria-live="polite" data-testid="dag-pending">Laying out {props.nodes.length} tasks…</p>;
  const states = props.states ?? {};
  const select = props.onSelect;
  return (
    <div class="dag" data-testid="dag" tabIndex={0} role="region" aria-label={`${props.label} (graph)`}>
      <svg
        width={laid.width}
        height={laid.height}
        viewBox={`0 0 ${laid.width} ${laid.height}`}
        role="group"
        aria-label={props.label}
      >
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">
            <path d="M0,0 L10,5 L0,10 z" class="arrowhead" />
          </marker>
        </defs>
        {laid.edges.map((e) => (
          <path key={`${e.from}>${e.to}`} d={e.d} class="edge" marker-end="url(#arrow)" />
        ))}
        {laid.nodes.map((n) => {
          const state = states[n.id] ?? "none";
          return (
            <g
              key={n.id}
              class={`node state-${state}${props.selected === n.id ? " selected" : ""}`}
              transform={`translate(${(n.x - n.w / 2).toFixed(1)},${(n.y - n.h / 2).toFixed(1)})`}
              data-task={n.id}
              data-state={state}
              tabindex={select ? 0 : undefined}
              role={select ? "button" : undefined}
              aria-label={select ? `task ${n.id}: ${state}` : undefined}
              onClick={select ? () => select(n.id) : undefined}
              onKeyDown={
                select
                  ? (ev: KeyboardEvent) => {
                      if (ev.key === "Enter" || ev.key === " ") {
                        ev.preventDefault();
                        select(n.id);
                      }
                    }
                  : undefined
              }
            >
              <rect width={n.w} height={n.h} rx="6" />
              <text x={n.w / 2} y={n.h / 2 + 4} text-anchor="middle">
                {n.label.length > 32 ? `${n.label.slice(0, 31)}…` : n.label}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}
