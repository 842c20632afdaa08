// Validate many state machine definitions with asl-validator in one process.
// The package builds a fresh Ajv (and compiles its JSON schemas again, ~0.25 s) for every
// definition; here the first instance is reused, so compiled schemas are kept. The checks
// run are the package's own: this script only changes how often Ajv is constructed.
// Usage: node validate_many.js FILE  (FILE: JSON array of [name, definition]); prints JSON
// {name: [errors...]} for the invalid ones.
"use strict";
const path = require("path");
const fs = require("fs");
const root = path.resolve(__dirname, "../../..");
const validatorDir = path.join(root, "node_modules", "asl-validator");
const ajvModule = require(require.resolve("ajv", { paths: [validatorDir] }));
const Original = ajvModule.default;
let shared = null;
function CachedAjv(opts) {
  if (shared === null) {
    shared = new Original(opts);
    // ajv-formats registers its keywords on every construction; once is enough
    const addKeyword = shared.addKeyword.bind(shared);
    shared.addKeyword = (def) => {
      const names = [].concat(typeof def === "string" ? def : def.keyword);
      return names.every((n) => shared.getKeyword(n)) ? shared : addKeyword(def);
    };
  }
  return shared;
}
ajvModule.default = CachedAjv;
const validator = require(path.join(validatorDir, "dist", "src", "validator.js"));
const items = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const bad = {};
for (const [name, definition] of items) {
  const result = validator(definition, { checkPaths: true, checkArn: true });
  if (!result.isValid) bad[name] = result.errors;
}
process.stdout.write(JSON.stringify(bad));
