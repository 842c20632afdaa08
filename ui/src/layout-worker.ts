// Lays graphs out off the page's thread: {id, nodes} in, {id, laid} (or {id, error}) out.
import { type DagNode, layoutDag } from "./layout";

self.onmessage = (ev: MessageEvent<{ id: number; nodes: DagNode[] }>) => {
  try {
    (self as unknown as Worker).postMessage({ id: ev.data.id, laid: layoutDag(ev.data.nodes) });
  } catch (e) {
    (self as unknown as Worker).postMessage({ id: ev.data.id, error: String(e) });
  }
};
