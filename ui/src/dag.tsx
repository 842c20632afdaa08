// A task graph laid out by dagre (no layout of our own): boxes coloured by state, edges as dagre routes
// them. The layout depends only on the tasks and their edges, so a run page that polls recolours the
// boxes without laying the graph out again.
import dagre from "@dagrejs/dagre";
import { useMemo } from "preact/hooks";

export interface DagNode {
  id: string;
  label?: string;
  deps: string[];
}

interface Laid {
  width: number;
  height: number;
  nodes: { id: string; label: string; x: number; y: number; w: number; h: number }[];
  edges: { from: string; to: string; d: string }[];
}

const NODE_H = 30;

export function layoutDag(nodes: DagNode[], direction: "LR" | "TB" = "LR"): Laid {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: direction, nodesep: 12, ranksep: 40, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const ids = new Set(nodes.map((n) => n.id));
  for (const n of nodes) {
    const label = n.label ?? n.id;
    g.setNode(n.id, { label, width: Math.min(240, 24 + 7 * label.length), height: NODE_H });
  }
  for (const n of nodes) for (const d of n.deps) if (ids.has(d)) g.setEdge(d, n.id);
  dagre.layout(g);
  const graph = g.graph();
  return {
    width: Math.ceil(graph.width ?? 0),
    height: Math.ceil(graph.height ?? 0),
    nodes: g.nodes().map((id) => {
      const n = g.node(id) as unknown as { label: string; x: number; y: number; width: number; height: number };
      return { id, label: n.label, x: n.x, y: n.y, w: n.width, h: n.height };
    }),
    edges: g.edges().map((e) => {
      const points = (g.edge(e) as unknown as { points: { x: number; y: number }[] }).points ?? [];
      const d = points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
      return { from: e.v, to: e.w, d };
    }),
  };
}

export function Dag(props: {
  nodes: DagNode[];
  states?: Record<string, string>;
  selected?: string | null;
  onSelect?: (id: string) => void;
  label: string;
}) {
  const key = props.nodes.map((n) => `${n.id}<${n.deps.join(",")}`).join(";");
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const laid = useMemo(() => layoutDag(props.nodes), [key]);
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
