// Builds the UI into shared/udop/api/ui_dist/ (committed; the wheel ships it), or into the folder
// given as the first argument (the test that checks the committed build is this lockfile's output).
//   npm ci --prefix ui && node ui/build.mjs
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "..", "shared", "udop", "api", "ui_dist"));
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  target: "es2020",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "external", // the bundled libraries' licence headers, beside the bundle
  charset: "utf8",
  logLevel: "warning",
};
await build({ ...common, entryPoints: ["src/main.tsx"], format: "esm", outfile: join(out, "app.js") });
// dagre runs in a (classic) Web Worker: a large graph is laid out while the page stays usable
await build({ ...common, entryPoints: ["src/layout-worker.ts"], format: "iife", outfile: join(out, "layout-worker.js") });
for (const name of ["index.html", "app.css"]) copyFileSync(join(here, "src", name), join(out, name));
