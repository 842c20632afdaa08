// The layout itself: dagre, in a Web Worker (layout-worker.ts) so that a page with a large graph is usable
// while it is laid out. Big graphs trade some crossing minimisation for time (docs/ui.md).
import dagre from "@dagrejs/dagre";

/** Above this many tasks: the longest-path ranker and no extra ordering passes (much faster). */
export const BIG_GRAPH = 300;

export interface DagNode {
  id: string;
  label?: string;
  deps: string[];
}

export interface Laid {
  width: number;
  height: number;
  nodes: { id: string; label: string; x: number; y: number; w: number; h: number }[];
  edges: { from: string; to: string; d: string }[];
}

const NODE_H = 30;

export function layoutDag(nodes: DagNode[], direction: "LR" | "TB" = "LR"): Laid {
  const big = nodes.length > BIG_GRAPH;
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: direction, nodesep: 12, ranksep: 40, marginx: 8, marginy: 8, ...(big ? { ranker: "longest-path" } : {}) });
  g.setDefaultEdgeLabel(() => ({}));
  const ids = new Set(nodes.map((n) => n.id));
  for (const n of nodes) {
    const label = n.label ?? n.id;
    g.setNode(n.id, { label, width: Math.min(240, 24 + 7 * label.length), height: NODE_H });
  }
  for (const n of nodes) for (const d of n.deps) if (ids.has(d)) g.setEdge(d, n.id);
  dagre.layout(g, big ? { disableOptimalOrderHeuristic: true } : undefined);
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

