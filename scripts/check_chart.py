"""Renders the Helm chart offline for every role and checks what it renders (issue #13).

usage: python scripts/check_chart.py --bin target/debug/tributary [--k8s 1.30.0]

- `helm lint` and a render (helm-python-sdk: Helm's Go SDK, no helm binary) of
  values-primary.yaml, values-secondary.yaml, values-central.yaml and the defaults;
- every built-in resource validated strictly (unknown fields are errors) against the Kubernetes
  schemas (kubernetes-validate); every custom resource (KEDA, prometheus-operator, Argo
  Rollouts) against the CRD schemas of the npm kubernetes-models packages (scripts/validate_crds.mjs);
- the chart agrees with the binary: every subcommand and flag a container runs exists in
  `tributary <subcommand> --help`; probes, container ports, Services, ServiceMonitors, PDBs and
  ScaledObjects point at ports, labels and workloads that exist;
- each role renders what it should (primary: continuous stages; secondary standby: a CronJob and
  no continuous stage; central: the federator only).
Exits non-zero with every problem listed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CHART = os.path.join(ROOT, "helm", "tributary")
BUILTIN_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1")
CUSTOM_GROUPS = ("keda.sh/v1alpha1", "monitoring.coreos.com/v1", "argoproj.io/v1alpha1")
WORKLOADS = ("Deployment", "StatefulSet", "Rollout")

problems = []


def problem(msg):
    problems.append(msg)


def render(values_file, extra=None):
    values = {}
    if values_file:
        with open(os.path.join(CHART, values_file)) as f:
            values = yaml.safe_load(f) or {}
    values.update(extra or {})
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="tr", namespace="tributary")
    docs = []
    for path, text in sorted(out.items()):
        for d in yaml.safe_load_all(text):
            if d:
                d["__template"] = path
                docs.append(d)
    return docs


def subcommand_flags(binary, sub):
    text = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def pod_specs(doc):
    k = doc["kind"]
    if k in WORKLOADS:
        return [doc["spec"]["template"]]
    if k == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]]
    if k == "Pod":
        return [{"metadata": doc["metadata"], "spec": doc["spec"]}]
    return []


def check_role(name, docs, binary, helps):
    where = lambda d: f"{name}: {d['kind']}/{d['metadata']['name']}"
    clean = [{k: v for k, v in d.items() if k != "__template"} for d in docs]
    # 1. schemas
    custom = []
    for d, c in zip(docs, clean):
        if d["apiVersion"] in BUILTIN_GROUPS:
            try:
                kubernetes_validate.validate(c, args.k8s, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError
                problem(f"{where(d)}: {str(e).splitlines()[0]}")
        elif d["apiVersion"] in CUSTOM_GROUPS:
            custom.append(c)
        else:
            problem(f"{where(d)}: unexpected apiVersion {d['apiVersion']}")
    if custom:
        r = subprocess.run(["node", os.path.join(ROOT, "scripts", "validate_crds.mjs")], input=json.dumps(custom),
                           capture_output=True, text=True, env=dict(os.environ, NODE_PATH=args.node_path))
        for line in r.stdout.splitlines():
            if not line.startswith("ok "):
                problem(f"{name}: {line}")
        if r.returncode != 0 and "INVALID" not in r.stdout and "UNKNOWN" not in r.stdout:
            problem(f"{name}: validate_crds.mjs failed: {r.stderr.strip()[:500]}")
    # the generated config parses as TOML and the binary accepts it (typed, deny_unknown_fields)
    for d in docs:
        if d["kind"] == "ConfigMap" and "tributary.toml" in d.get("data", {}):
            text = d["data"]["tributary.toml"]
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                problem(f"{where(d)}: tributary.toml is not TOML: {e}")
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
                f.write(text)
            r = subprocess.run([binary, "check-config", "-c", f.name], capture_output=True, text=True)
            if r.returncode != 0:
                problem(f"{where(d)}: the binary rejects tributary.toml: {(r.stdout + r.stderr).strip()[:400]}")
            # ... and so it does with each container's TRIBUTARY__ overrides (fieldRefs as a pod name)
            for w in docs:
                for p in pod_specs(w):
                    for c in p["spec"]["containers"]:
                        over = {}
                        for e in c.get("env", []):
                            if not e["name"].startswith("TRIBUTARY__"):
                                continue
                            if "value" in e:
                                over[e["name"]] = str(e["value"])
                            elif "fieldRef" in e.get("valueFrom", {}):
                                over[e["name"]] = "pod-0"
                        if over:
                            r = subprocess.run([binary, "check-config", "-c", f.name], capture_output=True, text=True,
                                               env=dict(os.environ, **over))
                            if r.returncode != 0:
                                problem(f"{where(w)}: the binary rejects its env overrides {sorted(over)}: "
                                        f"{(r.stdout + r.stderr).strip()[:400]}")
            os.unlink(f.name)
    # 2. the binary's flags, ports and probes
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in WORKLOADS}
    pods = [(d, p) for d in docs for p in pod_specs(d)]
    for d, p in pods:
        labels = p["metadata"].get("labels", {})
        for c in p["spec"]["containers"]:
            argv = c.get("args", [])
            sub = argv[0]
            if sub not in helps:
                try:
                    helps[sub] = subcommand_flags(binary, sub)
                except subprocess.CalledProcessError:
                    problem(f"{where(d)}: `tributary {sub}` is not a subcommand of the binary")
                    continue
            for a in argv[1:]:
                if a.startswith("--") and a.split("=")[0] not in helps[sub]:
                    problem(f"{where(d)}: `tributary {sub}` has no flag {a}")
            ports = {pp["name"]: pp["containerPort"] for pp in c.get("ports", [])}
            flag = lambda f: next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == f), None)
            for f, pname in [("--grpc-addr", "grpc"), ("--admin-addr", "admin"), ("--listen", "exposed")]:
                addr = flag(f)
                if addr is not None and ports.get(pname) != int(addr.rsplit(":", 1)[1]):
                    problem(f"{where(d)}: {f} {addr} but container port {pname} = {ports.get(pname)}")
            for probe in ("readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if d["kind"] in WORKLOADS and pr is None:
                    problem(f"{where(d)}: no {probe}")
                if pr and "grpc" in pr and pr["grpc"]["port"] != ports.get("grpc"):
                    problem(f"{where(d)}: {probe} gRPC port {pr['grpc']['port']} is not the grpc port")
                if pr and "httpGet" in pr and (pr["httpGet"]["port"] not in ports or pr["httpGet"]["path"] != "/healthz"):
                    problem(f"{where(d)}: {probe} {pr['httpGet']} is not the admin /healthz")
        if d["kind"] in WORKLOADS:
            sel = d["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in sel.items()):
                problem(f"{where(d)}: selector {sel} does not match its pod labels")
    # 3. references between resources
    pod_labels = [(d, p["metadata"].get("labels", {}), {pp["name"] for c in p["spec"]["containers"] for pp in c.get("ports", [])})
                  for d, p in pods if d["kind"] in WORKLOADS]
    services = [d for d in docs if d["kind"] == "Service"]
    for s in services:
        hit = [(d, ports) for d, labels, ports in pod_labels if all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
        if not hit:
            problem(f"{where(s)}: selects no pods")
        for sp in s["spec"]["ports"]:
            if hit and not any(sp["targetPort"] in ports for _, ports in hit):
                problem(f"{where(s)}: targetPort {sp['targetPort']} is no container port of its pods")
    for m in (d for d in docs if d["kind"] == "ServiceMonitor"):
        sel = m["spec"]["selector"]["matchLabels"]
        svc = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        if not svc:
            problem(f"{where(m)}: selects no Service")
        for e in m["spec"]["endpoints"]:
            if svc and not any(e["port"] in {p["name"] for p in s["spec"]["ports"]} for s in svc):
                problem(f"{where(m)}: endpoint port {e['port']} is not a port of its Service")
    for b in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        sel = b["spec"]["selector"]["matchLabels"]
        if not any(all(labels.get(k) == v for k, v in sel.items()) for _, labels, _ in pod_labels):
            problem(f"{where(b)}: selects no pods")
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        if (ref.get("kind", "Deployment"), ref["name"]) not in workloads:
            problem(f"{where(so)}: scaleTargetRef {ref} is no workload of this release")
    for r in (d for d in docs if d["kind"] == "Rollout"):
        for step in r["spec"]["strategy"]["canary"]["steps"]:
            for t in step.get("analysis", {}).get("templates", []):
                if not any(d["kind"] == "AnalysisTemplate" and d["metadata"]["name"] == t["templateName"] for d in docs):
                    problem(f"{where(r)}: analysis template {t['templateName']} is not rendered")
    return workloads


ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--k8s", default="1.30.0")
ap.add_argument("--node-path", default=os.path.join(ROOT, ".cache", "npm", "node_modules"))
args = ap.parse_args()

lint = helm.lint(CHART)
for m in lint.get("messages", []):
    if m.get("severity", 0) >= 3:  # 3 = error (1 = info, 2 = warning)
        problem(f"helm lint: {m}")
helps = {}
components = {}
for role_file in ["values-primary.yaml", "values-secondary.yaml", "values-central.yaml", None]:
    name = role_file or "defaults"
    docs = render(role_file)
    w = check_role(name, docs, args.bin, helps)
    components[name] = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["kind"] for d in w.values()}
    components[name]["cronjobs"] = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CronJob")
    print(f"{name}: {len(docs)} resources: " + ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)))

# 4. each role renders what it should
regional = {"bronze-ingest", "silver-transform", "gold-aggregate"}
p, s, c = components["values-primary.yaml"], components["values-secondary.yaml"], components["values-central.yaml"]
if not regional <= set(p) or "central-federator" in p or p["cronjobs"]:
    problem(f"primary renders {p}")
if p.get("bronze-ingest") != "StatefulSet" or p.get("silver-transform") != "Rollout" or p.get("kafka2prom") != "Rollout":
    problem(f"primary: bronze-ingest (static membership) must be a StatefulSet, the rest Rollouts: {p}")
if set(s) & (regional | {"central-federator"}) or len(s["cronjobs"]) != 1:
    problem(f"a standby secondary renders no continuous stage and one CronJob: {s}")
if set(k for k in c if k != "cronjobs") != {"central-federator"} or c["cronjobs"]:
    problem(f"central renders the federator only: {c}")
active_secondary = render("values-secondary.yaml", {"active": True})
if not regional <= {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in active_secondary if d["kind"] in WORKLOADS}:
    problem("a secondary made active (failover) does not run its stages continuously")
try:
    render(None, {"role": "tertiary"})
    problem("an invalid role rendered")
except Exception as e:
    if "role must be primary, secondary or central" not in str(e):
        problem(f"an invalid role failed with the wrong message: {e}")

if problems:
    print(f"{len(problems)} problems:")
    for m in problems:
        print("  - " + m)
    sys.exit(1)
print("chart OK: lint, schemas, flags, ports, probes, selectors and roles")
