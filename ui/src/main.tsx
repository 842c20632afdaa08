// The udop web UI: a hash-routed single page over the REST API (docs/ui.md).
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, type Identity, authHeaders, apiBase, credential, get, onUnauthorised, setCredential } from "./api";
import { LineagePage } from "./lineage";
import { PipelinePage, PipelinesPage } from "./pipelines";
import { RunPage, RunsPage } from "./runs";
import { ErrorLine, href } from "./util";

export interface Route {
  path: string[];
  query: URLSearchParams;
}

function parseHash(): Route {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?", 2);
  return {
    path: (path ?? "").split("/").filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(query ?? ""),
  };
}


function SignIn(props: { onSignedIn: (me: Identity) => void; reason: string | null }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(props.reason);
  const [busy, setBusy] = useState(false);
  async function submit(ev: Event) {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // checked against the API before it is kept
      const res = await fetch(`${apiBase}me`, { headers: authHeaders(value), credentials: "omit", cache: "no-store" });
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        throw new ApiError(res.status, (body && body.detail) || `${res.status} ${res.statusText}`);
      }
      const me = (await res.json()) as Identity;
      setCredential(value.trim());
      setValue("");
      props.onSignedIn(me);
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  }
  return (
    <main id="main" class="signin">
      <h1>Sign in to udop</h1>
      <form onSubmit={submit}>
        <label for="credential">API key or bearer token</label>
        <input
          id="credential"
          type="password"
          autocomplete="off"
          spellcheck={false}
          required
          value={value}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
        />
        <p class="hint">
          An API key (<code>udop_…</code>, from <code>udop api-key create</code>) is sent as <code>X-API-Key</code>;
          anything else as <code>Authorization: Bearer</code>. It is kept in this tab only, until you sign out or
          close it.
        </p>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        <ErrorLine error={error} />
      </form>
    </main>
  );
}

function Nav(props: { me: Identity; route: Route; onSignOut: () => void }) {
  const top = props.route.path[0] ?? "pipelines";
  const link = (path: string, text: string) => (
    <a href={href(path)} aria-current={top === path ? "page" : undefined}>
      {text}
    </a>
  );
  return (
    <header class="top">
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>
        Skip to content
      </a>
      <span class="brand">udop</span>
      <nav aria-label="main">
        {link("pipelines", "Pipelines")}
        {link("runs", "Runs")}
        {link("lineage", "Lineage")}
      </nav>
      <span class="who" data-testid="who">
        {props.me.subject} ({props.me.role ?? "no role"})
      </span>
      <button type="button" class="secondary" onClick={props.onSignOut}>
        Sign out
      </button>
    </header>
  );
}

function App() {
  const [route, setRoute] = useState<Route>(parseHash());
  const [me, setMe] = useState<Identity | null>(null);
  const [checking, setChecking] = useState<boolean>(credential() !== null);
  const [reason, setReason] = useState<string | null>(null);

  useEffect(() => {
    const onHash = () => setRoute(parseHash());
    addEventListener("hashchange", onHash);
    onUnauthorised(() => {
      setCredential(null);
      setMe(null);
      setReason("Your credentials were refused (expired or revoked); sign in again.");
    });
    if (credential()) {
      get<Identity>("me").then(
        (m) => {
          setMe(m);
          setChecking(false);
        },
        (e: Error) => {
          setCredential(null);
          setReason(e.message);
          setChecking(false);
        },
      );
    }
    return () => removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    const page = route.path[0] ?? "pipelines";
    document.title = `udop · ${page}${route.path[1] ? ` · ${route.path[1]}` : ""}`;
  }, [route]);

  if (checking) return <p aria-live="polite">Checking your credentials…</p>;
  if (!me) return <SignIn reason={reason} onSignedIn={(m) => { setReason(null); setMe(m); }} />;
  const signOut = () => {
    setCredential(null);
    setMe(null);
  };
  const [page, arg] = route.path;
  let body;
  if (page === "runs" && arg) body = <RunPage id={arg} me={me} task={route.query.get("task")} />;
  else if (page === "runs") body = <RunsPage query={route.query} />;
  else if (page === "pipelines" && arg) body = <PipelinePage name={arg} me={me} />;
  else if (page === "lineage") body = <LineagePage query={route.query} />;
  else body = <PipelinesPage />;
  return (
    <>
      <Nav me={me} route={route} onSignOut={signOut} />
      <main id="main" tabIndex={-1}>
        {body}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
