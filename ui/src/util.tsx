import { useEffect, useRef, useState } from "preact/hooks";

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function fmtDuration(start: string | null | undefined, end: string | null | undefined): string {
  if (!start) return "–";
  const ms = (end ? Date.parse(end) : Date.now()) - Date.parse(start);
  if (!Number.isFinite(ms) || ms < 0) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function StateBadge(props: { state: string }) {
  return <span class={`badge state-${props.state}`}>{props.state.replace("_", " ")}</span>;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Loads with ``load`` now and again ``every`` ms after each answer (live pages); ``every`` may depend on
 * the last answer (a finished run is not polled), null stops. */
export function usePoll<T>(
  load: () => Promise<T>,
  deps: unknown[],
  every: number | null | ((data: T | null) => number | null),
) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const gen = useRef(0);
  useEffect(() => {
    const mine = ++gen.current;
    load().then(
      (d) => {
        if (gen.current === mine) {
          setData(d);
          setError(null);
        }
      },
      (e: Error) => {
        if (gen.current === mine) setError(e.message);
      },
    );
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  useEffect(() => {
    const ms = typeof every === "function" ? every(data) : every;
    if (ms === null) return undefined;
    const t = setTimeout(() => setTick((n) => n + 1), ms);
    return () => clearTimeout(t);
  }, [every, tick, data, error]);
  useEffect(() => {
    setData(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return { data, error, reload: () => setTick((n) => n + 1) };
}

export function ErrorLine(props: { error: string | null }) {
  return props.error ? (
    <p class="error" role="alert">
      {props.error}
    </p>
  ) : null;
}

export function Loading() {
  return <p aria-live="polite">Loading…</p>;
}

/** A link inside the UI (hash routing: the server only ever serves index.html). */
export function href(path: string, query?: Record<string, string | null | undefined>): string {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v) s.set(k, v);
  const text = s.toString();
  return `#/${path}${text ? `?${text}` : ""}`;
}
