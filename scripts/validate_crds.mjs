// Validates custom resources (KEDA, prometheus-operator, Argo Rollouts) read as a JSON array on
// stdin against the CRD schemas of the npm kubernetes-models packages. Prints one line per
// resource; exits 1 if any is invalid or of an unknown kind. Used by scripts/check_chart.py.
// NODE_PATH names the node_modules holding the packages (make test-deps installs them into
// .cache/npm); some are ESM-only, so each group's index module is imported by its file path.
import { existsSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const GROUPS = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "argoproj.io/v1alpha1": "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1",
};
const modules = process.env.NODE_PATH || "node_modules";

async function load(base) {
  const dir = path.join(modules, base);
  const file = ["index.mjs", "index.js"].map((f) => path.join(dir, f)).find(existsSync);
  if (!file) throw new Error(`${dir} not found (run make test-deps)`);
  return import(pathToFileURL(file).href);
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const doc of JSON.parse(input)) {
  const where = `${doc.apiVersion}/${doc.kind} ${doc.metadata && doc.metadata.name}`;
  const base = GROUPS[doc.apiVersion];
  if (!base) {
    console.log(`UNKNOWN ${where}`);
    failed++;
    continue;
  }
  try {
    const Model = (await load(base))[doc.kind];
    if (!Model) throw new Error(`no model of kind ${doc.kind} in ${base}`);
    new Model(doc).validate();
    console.log(`ok ${where}`);
  } catch (e) {
    console.log(`INVALID ${where}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
