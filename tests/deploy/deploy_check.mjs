// Offline validation of hearth's deployment files: what can be checked
// without a container engine or a cluster.
//
//   node tests/deploy/deploy_check.mjs [--root DIR] [--node-modules DIR] CHECK...
//
//   compose      docker-compose.yml (+ docker-compose.gpu.yml merged on top)
//                against the compose-spec JSON schema, plus its references:
//                depends_on, volumes, bind-mount sources, Dockerfiles, and
//                Prometheus' targets = the services' metrics ports
//   k8s          every overlay in deploy/k8s/overlays rendered (tests/deploy/
//                kustomize.mjs) and validated against the Kubernetes schemas,
//                plus its references: Services/PDBs/NetworkPolicies select real
//                pods, probes are gRPC on the grpc port, mounted config files
//                exist, autoscalers target a Deployment, the gateway resolves
//                the headless worker Service, PrometheusRule = rules file
//   grafana      the dashboard's datasource is the provisioned one, panel ids
//                are unique, docker-compose mounts what the providers read
//   prometheus   promtool check config / check rules / test rules
//   dockerfiles  every deploy/docker/Dockerfile* installs exactly
//                scripts/setup's APT_PACKAGES, runs as non-root, health-checks
//                over gRPC and keeps /models as a volume
//   metrics      (needs --scrape DIR of live /metrics bodies) every metric the
//                dashboard, the rules, the HPA, prometheus-adapter and KEDA
//                name appears in the scrape, with the labels they select on
//   render OVERLAY   print the rendered overlay as JSON (one object per line)
//
// Each problem is printed as "FAIL <check>: <what>"; the exit code is 1 if any
// check failed, 3 if the npm packages are missing, 0 otherwise. --root points
// the checks at another tree (tests/deploy feeds broken copies this way).
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const REQUIRED_PACKAGES = ["yaml", "ajv", "ajv-formats", "dclint", "kubernetes-models",
                           "@kubernetes-models/keda", "@kubernetes-models/prometheus-operator"];

function parseArgs(argv) {
  const args = { root: path.resolve(here, "../.."), nodeModules: null, scrape: null, checks: [] };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === "--root") args.root = path.resolve(argv[++i]);
    else if (a === "--node-modules") args.nodeModules = path.resolve(argv[++i]);
    else if (a === "--scrape") args.scrape = path.resolve(argv[++i]);
    else args.checks.push(a);
  }
  args.nodeModules ??= process.env.HEARTH_NODE_MODULES ?? path.resolve(here, "../../.deps/node/node_modules");
  return args;
}

// The state of one run (runChecks sets it; the checks read it).
let args, NM, ROOT, req, YAML, failures, out;
let kustomize, resourceId, KustomizeError, validateObject;

// Null when every npm package is there, else the missing one's name.
export function missingPackage(nodeModules) {
  return REQUIRED_PACKAGES.find((pkg) => !fs.existsSync(path.join(nodeModules, pkg, "package.json"))) ?? null;
}

function fail(check, what) {
  failures++;
  out.push(`FAIL ${check}: ${what}`);
}
const rel = (p) => path.relative(ROOT, p);
const readYaml = (file) => YAML.parse(fs.readFileSync(file, "utf8"), { merge: true });

// ---- compose --------------------------------------------------------------

let compiledSchema = null;
function composeSchema() {
  if (compiledSchema) return compiledSchema;
  const schema = JSON.parse(fs.readFileSync(path.join(NM, "dclint/schemas/compose.schema.json"), "utf8"));
  delete schema.$schema;
  const Ajv = req("ajv").default;
  const addFormats = req("ajv-formats").default ?? req("ajv-formats");
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  // compose-spec's own formats: Go durations, port and subnet strings.
  ajv.addFormat("duration", /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$/);
  ajv.addFormat("ports", true);
  ajv.addFormat("expose", true);
  ajv.addFormat("subnet_ip_address", true);
  compiledSchema = ajv.compile(schema);
  return compiledSchema;
}

// Compose's merge of several -f files: mappings merge, `command` and other
// sequences are replaced (ports/volumes are appended in compose; hearth's
// override file sets neither).
function composeMerge(a, b) {
  if (b === null || typeof b !== "object" || Array.isArray(b) || typeof a !== "object" || Array.isArray(a) || a === null) return structuredClone(b);
  const out = structuredClone(a);
  for (const [k, v] of Object.entries(b)) out[k] = k in out ? composeMerge(out[k], v) : structuredClone(v);
  return out;
}

function flagValue(command, flag) {
  const spellings = [flag, flag.replace(/_/g, "-")];
  for (const arg of command ?? []) {
    for (const s of spellings) if (typeof arg === "string" && arg.startsWith(`--${s}=`)) return arg.slice(s.length + 3);
  }
  return undefined;
}

function checkCompose() {
  const validate = composeSchema();
  const base = path.join(ROOT, "docker-compose.yml");
  const gpu = path.join(ROOT, "docker-compose.gpu.yml");
  const docs = {};
  for (const file of [base, gpu]) {
    if (!fs.existsSync(file)) { fail("compose", `${rel(file)} is missing`); continue; }
    try {
      docs[file] = readYaml(file);
    } catch (e) {
      fail("compose", `${rel(file)}: ${e.message}`);
      continue;
    }
    if (!validate(docs[file])) {
      for (const e of validate.errors) fail("compose", `${rel(file)}: ${e.instancePath || "/"} ${e.message}${e.params?.additionalProperty ? ` ("${e.params.additionalProperty}")` : ""}`);
    }
  }
  if (!docs[base]) return;
  const variants = { [rel(base)]: docs[base] };
  if (docs[gpu]) {
    const merged = composeMerge(docs[base], docs[gpu]);
    if (!validate(merged)) for (const e of validate.errors) fail("compose", `base + gpu merged: ${e.instancePath} ${e.message}`);
    variants["base + gpu"] = merged;
    for (const name of Object.keys(docs[gpu].services ?? {})) {
      if (!docs[base].services?.[name]) fail("compose", `${rel(gpu)}: service ${name} is not in ${rel(base)}`);
    }
    for (const [name, svc] of Object.entries(merged.services)) {
      if (!/^hearth-worker$/.test(svc.command?.[0] ?? "")) continue;
      const devices = svc.deploy?.resources?.reservations?.devices ?? [];
      if (!devices.some((d) => (d.capabilities ?? []).includes("gpu"))) fail("compose", `base + gpu: worker ${name} reserves no GPU`);
      if (!/^cuda/.test(flagValue(svc.command, "devices") ?? "")) fail("compose", `base + gpu: worker ${name} does not run on --devices=cuda:N`);
    }
  }
  for (const [variant, doc] of Object.entries(variants)) {
    const services = doc.services ?? {};
    const volumes = doc.volumes ?? {};
    const workers = [];
    for (const [name, svc] of Object.entries(services)) {
      const deps = Array.isArray(svc.depends_on) ? svc.depends_on : Object.keys(svc.depends_on ?? {});
      for (const d of deps) if (!services[d]) fail("compose", `${variant}: ${name} depends on unknown service ${d}`);
      for (const v of svc.volumes ?? []) {
        const src = typeof v === "string" ? v.split(":")[0] : v.source;
        if (!src) continue;
        if (src.startsWith(".") || src.startsWith("/")) {
          if (!fs.existsSync(path.resolve(ROOT, src))) fail("compose", `${variant}: ${name} mounts ${src}, which does not exist`);
        } else if (!(src in volumes)) {
          fail("compose", `${variant}: ${name} uses volume ${src}, not declared under volumes:`);
        }
      }
      if (svc.build?.dockerfile && !fs.existsSync(path.resolve(ROOT, svc.build.context ?? ".", svc.build.dockerfile))) {
        fail("compose", `${variant}: ${name} builds ${svc.build.dockerfile}, which does not exist`);
      }
      const config = flagValue(svc.command, "config");
      if (config && !fs.existsSync(path.join(ROOT, "deploy/config", path.relative("/etc/hearth", config)))) {
        fail("compose", `${variant}: ${name} reads ${config}, but the image gets /etc/hearth from deploy/config, which has no such file`);
      }
      if (svc.command?.[0] === "hearth-worker") workers.push(name);
    }
    if (workers.length < 2) fail("compose", `${variant}: ${workers.length} worker service(s), the stack has two`);
    const gw = Object.entries(services).find(([, s]) => s.command?.[0] === "hearth-gateway");
    if (!gw) fail("compose", `${variant}: no gateway service`);
    else {
      const listed = (flagValue(gw[1].command, "workers") ?? "").split(",").filter(Boolean);
      for (const w of workers) {
        const port = flagValue(services[w].command, "grpc_port");
        if (!listed.includes(`${w}:${port}`)) fail("compose", `${variant}: the gateway's --workers does not list ${w}:${port}`);
      }
      for (const l of listed) if (!services[l.split(":")[0]]) fail("compose", `${variant}: the gateway's --workers names unknown service ${l}`);
      for (const f of ["quantizer", "distiller"]) {
        const addr = flagValue(gw[1].command, f);
        const svc = addr && services[addr.split(":")[0]];
        if (!svc || flagValue(svc.command, "grpc_port") !== addr.split(":")[1]) fail("compose", `${variant}: the gateway's --${f}=${addr} is not a service's gRPC port`);
      }
    }
    // Prometheus scrapes every hearth service's metrics port.
    const prom = path.join(ROOT, "deploy/prometheus/prometheus.yml");
    if (!fs.existsSync(prom)) { fail("compose", "deploy/prometheus/prometheus.yml is missing"); continue; }
    const targets = new Set();
    for (const job of readYaml(prom).scrape_configs ?? []) {
      for (const sc of job.static_configs ?? []) for (const t of sc.targets ?? []) targets.add(t);
    }
    const expected = new Set();
    for (const [name, svc] of Object.entries(services)) {
      const port = /^hearth-/.test(svc.command?.[0] ?? "") ? flagValue(svc.command, "metrics_port") : undefined;
      if (port && port !== "0") expected.add(`${name}:${port}`);
    }
    for (const t of expected) if (!targets.has(t)) fail("compose", `${variant}: Prometheus does not scrape ${t}`);
    for (const t of targets) if (!expected.has(t)) fail("compose", `${variant}: Prometheus scrapes ${t}, which is no service's metrics port`);
    if (!Object.values(services).some((s) => /prometheus/.test(s.image ?? ""))) fail("compose", `${variant}: no Prometheus service`);
    if (!Object.values(services).some((s) => /grafana/.test(s.image ?? ""))) fail("compose", `${variant}: no Grafana service`);
  }
}

// ---- Kubernetes --------------------------------------------------------

function overlays() {
  const dir = path.join(ROOT, "deploy/k8s/overlays");
  return fs.readdirSync(dir).filter((d) => fs.statSync(path.join(dir, d)).isDirectory()).map((d) => path.join(dir, d));
}

function selects(selector, labels) {
  const ml = selector?.matchLabels ?? {};
  if (!Object.keys(ml).length && !(selector?.matchExpressions ?? []).length) return true;
  return Object.entries(ml).every(([k, v]) => labels?.[k] === v);
}

async function checkK8s() {
  for (const dir of overlays()) {
    const name = rel(dir);
    let res;
    try {
      res = kustomize(dir, YAML);
    } catch (e) {
      if (!(e instanceof KustomizeError) && !(e instanceof YAML.YAMLError)) throw e;
      fail("k8s", `${name}: ${e.message}`);
      continue;
    }
    for (const r of res) for (const e of await validateObject(r, NM)) fail("k8s", `${name}: ${e}`);
    checkK8sReferences(name, res);
  }
  // PrometheusRule carries the same rules as deploy/prometheus/rules/hearth.yml.
  const ruleFile = path.join(ROOT, "deploy/prometheus/rules/hearth.yml");
  const crFile = path.join(ROOT, "deploy/k8s/base/prometheus-rule.yaml");
  if (JSON.stringify(readYaml(ruleFile)) !== JSON.stringify(readYaml(crFile).spec)) {
    fail("k8s", "deploy/k8s/base/prometheus-rule.yaml's spec differs from deploy/prometheus/rules/hearth.yml");
  }
}

function checkK8sReferences(name, res) {
  const by = (kind) => res.filter((r) => r.kind === kind);
  const deployments = by("Deployment");
  const podLabels = (d) => d.spec?.template?.metadata?.labels ?? {};
  const named = (kind, n) => res.find((r) => r.kind === kind && r.metadata.name === n);
  const ns = new Set(res.map((r) => r.metadata.namespace));
  if (ns.size !== 1 || ns.has(undefined)) fail("k8s", `${name}: objects are spread over namespaces ${[...ns].join(", ")}`);
  for (const d of deployments) {
    if (!selects(d.spec.selector, podLabels(d))) fail("k8s", `${name}: Deployment ${d.metadata.name}'s selector does not match its pod template`);
    const spec = d.spec.template.spec;
    if (!spec.securityContext?.runAsNonRoot) fail("k8s", `${name}: Deployment ${d.metadata.name} may run as root`);
    const volumes = Object.fromEntries((spec.volumes ?? []).map((v) => [v.name, v]));
    for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
      for (const m of c.volumeMounts ?? []) {
        const v = volumes[m.name];
        if (!v) { fail("k8s", `${name}: ${d.metadata.name}/${c.name} mounts unknown volume ${m.name}`); continue; }
        if (v.configMap && !named("ConfigMap", v.configMap.name)) fail("k8s", `${name}: volume ${m.name} uses missing ConfigMap ${v.configMap.name}`);
        if (v.secret && !named("Secret", v.secret.secretName)) fail("k8s", `${name}: volume ${m.name} uses missing Secret ${v.secret.secretName}`);
        if (v.persistentVolumeClaim && !named("PersistentVolumeClaim", v.persistentVolumeClaim.claimName)) fail("k8s", `${name}: volume ${m.name} uses missing PVC ${v.persistentVolumeClaim.claimName}`);
      }
    }
    for (const c of spec.containers) {
      const grpcPort = (c.ports ?? []).find((p) => p.name === "grpc")?.containerPort;
      if (!grpcPort) fail("k8s", `${name}: ${d.metadata.name}/${c.name} has no port named grpc`);
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        if (c[probe]?.grpc?.port !== grpcPort) fail("k8s", `${name}: ${d.metadata.name}/${c.name}'s ${probe} is not a gRPC health check on port ${grpcPort}`);
      }
      const cmd = [...(c.command ?? []), ...(c.args ?? [])];
      if (String(flagValue(cmd, "grpc_port")) !== String(grpcPort)) fail("k8s", `${name}: ${d.metadata.name}/${c.name} listens on --grpc-port=${flagValue(cmd, "grpc_port")} but declares grpc port ${grpcPort}`);
      const metricsPort = (c.ports ?? []).find((p) => p.name === "metrics")?.containerPort;
      if (String(flagValue(cmd, "metrics_port")) !== String(metricsPort)) fail("k8s", `${name}: ${d.metadata.name}/${c.name} serves --metrics-port=${flagValue(cmd, "metrics_port")} but declares metrics port ${metricsPort}`);
      // A file named by a flag under a ConfigMap/Secret mount must be a key of it.
      for (const arg of cmd) {
        const m = /^--[\w-]+=(\/.+)$/.exec(arg);
        if (!m) continue;
        for (const vm of c.volumeMounts ?? []) {
          if (!m[1].startsWith(vm.mountPath + "/")) continue;
          const v = volumes[vm.name];
          const key = m[1].slice(vm.mountPath.length + 1);
          const src = v?.configMap ? named("ConfigMap", v.configMap.name) : v?.secret ? named("Secret", v.secret.secretName) : null;
          if (src && !(key in (src.data ?? {})) && !(key in (src.stringData ?? {}))) fail("k8s", `${name}: ${d.metadata.name}/${c.name} reads ${m[1]}, but ${src.kind} ${src.metadata.name} has no key ${key}`);
        }
      }
      // The gateway's upstreams are Services with those ports.
      for (const flag of ["workers_dns", "quantizer", "distiller"]) {
        const addr = flagValue(cmd, flag);
        if (!addr) continue;
        const [host, port] = addr.split(":");
        const svc = named("Service", host);
        if (!svc || !(svc.spec.ports ?? []).some((p) => String(p.port) === port)) {
          fail("k8s", `${name}: --${flag}=${addr} is not a Service port`);
        } else if (flag === "workers_dns" && svc.spec.clusterIP !== "None") {
          fail("k8s", `${name}: --workers_dns=${addr} must name a headless Service (clusterIP: None), or the gateway sees one address`);
        }
      }
      // Config files the containers read must be accepted by the services:
      // tests/deploy starts the real binaries with deploy/config/*.
    }
  }
  for (const s of by("Service")) {
    const pods = deployments.filter((d) => selects({ matchLabels: s.spec.selector }, podLabels(d)));
    if (!pods.length) { fail("k8s", `${name}: Service ${s.metadata.name} selects no pods`); continue; }
    for (const p of s.spec.ports ?? []) {
      const ports = pods.flatMap((d) => d.spec.template.spec.containers.flatMap((c) => c.ports ?? []));
      const ok = typeof p.targetPort === "string" ? ports.some((cp) => cp.name === p.targetPort) : ports.some((cp) => cp.containerPort === (p.targetPort ?? p.port));
      if (!ok) fail("k8s", `${name}: Service ${s.metadata.name} port ${p.name ?? p.port} targets ${p.targetPort}, which its pods do not declare`);
    }
  }
  for (const pdb of by("PodDisruptionBudget")) {
    if (!deployments.some((d) => selects(pdb.spec.selector, podLabels(d)))) fail("k8s", `${name}: PodDisruptionBudget ${pdb.metadata.name} selects no pods`);
  }
  for (const np of by("NetworkPolicy")) {
    if (Object.keys(np.spec.podSelector?.matchLabels ?? {}).length && !deployments.some((d) => selects(np.spec.podSelector, podLabels(d)))) {
      fail("k8s", `${name}: NetworkPolicy ${np.metadata.name} applies to no pods`);
    }
    for (const rule of np.spec.ingress ?? []) {
      for (const from of rule.from ?? []) {
        if (from.podSelector && !deployments.some((d) => selects(from.podSelector, podLabels(d)))) fail("k8s", `${name}: NetworkPolicy ${np.metadata.name} allows traffic from pods that do not exist`);
      }
      const targets = deployments.filter((d) => selects(np.spec.podSelector, podLabels(d)));
      for (const p of rule.ports ?? []) {
        const declared = targets.some((d) => d.spec.template.spec.containers.some((c) => (c.ports ?? []).some((cp) => cp.containerPort === p.port || cp.name === p.port)));
        if (!declared) fail("k8s", `${name}: NetworkPolicy ${np.metadata.name} opens port ${p.port}, which its pods do not serve`);
      }
    }
  }
  // Gateway -> worker traffic must be allowed on the worker's gRPC port.
  const worker = deployments.find((d) => d.metadata.name === "hearth-worker");
  const gateway = deployments.find((d) => d.metadata.name === "hearth-gateway");
  if (!worker || !gateway) fail("k8s", `${name}: hearth-worker and hearth-gateway Deployments are required`);
  else {
    const allowed = by("NetworkPolicy").some((np) => selects(np.spec.podSelector, podLabels(worker)) && Object.keys(np.spec.podSelector?.matchLabels ?? {}).length &&
      (np.spec.ingress ?? []).some((r) => (r.from ?? []).some((f) => f.podSelector && selects(f.podSelector, podLabels(gateway))) && (r.ports ?? []).some((p) => p.port === 9001)));
    if (!allowed) fail("k8s", `${name}: no NetworkPolicy lets the gateway reach the workers on 9001`);
  }
  for (const sm of by("ServiceMonitor")) {
    const svcs = by("Service").filter((s) => selects(sm.spec.selector, s.metadata.labels));
    if (!svcs.length) fail("k8s", `${name}: ServiceMonitor ${sm.metadata.name} selects no Service`);
    for (const ep of sm.spec.endpoints ?? []) {
      for (const s of svcs) if (!(s.spec.ports ?? []).some((p) => p.name === ep.port)) fail("k8s", `${name}: Service ${s.metadata.name} has no port ${ep.port} for the ServiceMonitor`);
    }
  }
  const scalers = [...by("HorizontalPodAutoscaler"), ...by("ScaledObject")];
  if (!scalers.length) fail("k8s", `${name}: nothing autoscales the workers`);
  const scaled = new Map();
  for (const s of scalers) {
    const t = s.spec.scaleTargetRef;
    if (!deployments.some((d) => d.metadata.name === t.name && (t.kind ?? "Deployment") === "Deployment")) fail("k8s", `${name}: ${s.kind} ${s.metadata.name} scales ${t.kind ?? "Deployment"}/${t.name}, which does not exist`);
    if (scaled.has(t.name)) fail("k8s", `${name}: ${t.name} is scaled by both ${scaled.get(t.name)} and ${s.kind}`);
    scaled.set(t.name, s.kind);
  }
  for (const d of deployments) {
    const gpu = d.spec.template.spec.containers.some((c) => c.resources?.limits?.["nvidia.com/gpu"]);
    const devices = d.spec.template.spec.containers.map((c) => flagValue([...(c.command ?? []), ...(c.args ?? [])], "devices")).find(Boolean);
    if (devices && /cuda/.test(devices) !== gpu) fail("k8s", `${name}: ${d.metadata.name} runs --devices=${devices} but ${gpu ? "requests" : "does not request"} nvidia.com/gpu`);
  }
}

// ---- Grafana ------------------------------------------------------------------

function checkGrafana() {
  const g = path.join(ROOT, "deploy/grafana");
  const sources = readYaml(path.join(g, "provisioning/datasources/prometheus.yaml")).datasources ?? [];
  const uids = new Set(sources.map((d) => d.uid));
  const providers = readYaml(path.join(g, "provisioning/dashboards/hearth.yaml")).providers ?? [];
  let dash;
  try {
    dash = JSON.parse(fs.readFileSync(path.join(g, "dashboards/hearth.json"), "utf8"));
  } catch (e) {
    fail("grafana", `dashboards/hearth.json: ${e.message}`);
    return;
  }
  const ids = new Set();
  const refs = [...(dash.panels ?? []).flatMap((p) => [p.datasource, ...(p.targets ?? []).map((t) => t.datasource)]),
                ...(dash.templating?.list ?? []).map((v) => v.datasource)];
  for (const ds of refs) {
    if (ds && !uids.has(ds.uid)) fail("grafana", `the dashboard uses datasource uid "${ds.uid}", which provisioning/datasources does not define`);
  }
  for (const p of dash.panels ?? []) {
    if (ids.has(p.id)) fail("grafana", `panel id ${p.id} is used twice`);
    ids.add(p.id);
    if (!p.gridPos) fail("grafana", `panel "${p.title}" has no gridPos`);
  }
  // docker-compose mounts the dashboards where the provider looks for them.
  const compose = readYaml(path.join(ROOT, "docker-compose.yml"));
  const grafana = Object.values(compose.services ?? {}).find((s) => /grafana/.test(s.image ?? ""));
  const mounts = (grafana?.volumes ?? []).map((v) => (typeof v === "string" ? v.split(":") : [v.source, v.target]));
  for (const pr of providers) {
    const m = mounts.find(([src, dst]) => dst === pr.options?.path && path.resolve(ROOT, src) === path.join(g, "dashboards"));
    if (!m) fail("grafana", `provider ${pr.name} reads ${pr.options?.path}, where docker-compose does not mount deploy/grafana/dashboards`);
  }
  if (!mounts.some(([src, dst]) => dst === "/etc/grafana/provisioning" && path.resolve(ROOT, src) === path.join(g, "provisioning"))) {
    fail("grafana", "docker-compose does not mount deploy/grafana/provisioning at /etc/grafana/provisioning");
  }
  const prom = Object.entries(compose.services ?? {}).find(([, s]) => /prometheus/.test(s.image ?? ""));
  for (const d of sources) {
    const host = /^https?:\/\/([^:/]+)/.exec(d.url ?? "")?.[1];
    if (prom && host !== prom[0]) fail("grafana", `datasource ${d.name} points at ${d.url}, not the compose service ${prom[0]}`);
  }
}

// ---- Prometheus (promtool) -------------------------------------------------

function promtool(argv) {
  try {
    return { ok: true, out: execFileSync("promtool", argv, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }) };
  } catch (e) {
    if (e.code === "ENOENT") return null;
    return { ok: false, out: `${e.stdout ?? ""}${e.stderr ?? ""}` };
  }
}

function checkPrometheus() {
  const runs = [
    ["check", "config", "deploy/prometheus/prometheus.yml"],
    ["check", "rules", "deploy/prometheus/rules/hearth.yml"],
    ["test", "rules", ...fs.readdirSync(path.join(ROOT, "deploy/prometheus/tests")).map((f) => `deploy/prometheus/tests/${f}`)],
  ];
  for (const argv of runs) {
    const r = promtool(argv);
    if (r === null) { out.push("SKIP prometheus: promtool is not installed (Debian package prometheus)"); return; }
    if (!r.ok) fail("prometheus", `promtool ${argv.join(" ")}:\n${r.out.trim()}`);
  }
}

// ---- Dockerfiles ------------------------------------------------------------

function setupPackages() {
  const text = fs.readFileSync(path.join(ROOT, "scripts/setup"), "utf8");
  const m = /^APT_PACKAGES=\(([\s\S]*?)^\)/m.exec(text);
  if (!m) throw new Error("scripts/setup has no APT_PACKAGES=( ... ) array");
  return m[1].replace(/#.*$/gm, "").split(/\s+/).filter(Boolean);
}

// Dockerfile instructions with their continuation lines joined.
function instructions(text) {
  const out = [];
  let cur = null;
  for (const line of text.split("\n")) {
    if (cur === null && /^\s*#/.test(line)) { out.push({ comment: line.trim() }); continue; }
    if (cur !== null && /^\s*#/.test(line)) continue;
    cur = cur === null ? line : `${cur} ${line.trim()}`;
    if (cur.endsWith("\\")) cur = cur.slice(0, -1);
    else { if (cur.trim()) out.push({ text: cur.trim() }); cur = null; }
  }
  return out;
}

function checkDockerfiles() {
  const want = setupPackages();
  const dir = path.join(ROOT, "deploy/docker");
  const files = fs.readdirSync(dir).filter((f) => /^Dockerfile/.test(f));
  if (!files.length) fail("dockerfiles", "no deploy/docker/Dockerfile*");
  for (const f of files) {
    const ins = instructions(fs.readFileSync(path.join(dir, f), "utf8"));
    let marked = 0;
    ins.forEach((x, i) => {
      if (x.comment !== "# apt: scripts/setup APT_PACKAGES") return;
      marked++;
      const run = ins.slice(i + 1).find((y) => y.text);
      const m = /apt-get install((?:\s+[^&;|]+))/.exec(run?.text ?? "");
      if (!run || !/^RUN\b/.test(run.text) || !m) { fail("dockerfiles", `${f}: the marked instruction is not a RUN apt-get install`); return; }
      const got = m[1].trim().split(/\s+/).filter((w) => !w.startsWith("-"));
      const missing = want.filter((p) => !got.includes(p));
      const extra = got.filter((p) => !want.includes(p));
      if (missing.length) fail("dockerfiles", `${f}: missing scripts/setup packages: ${missing.join(" ")}`);
      if (extra.length) fail("dockerfiles", `${f}: packages scripts/setup does not install: ${extra.join(" ")}`);
    });
    if (!marked) fail("dockerfiles", `${f}: no "# apt: scripts/setup APT_PACKAGES" install step`);
    const stages = ins.filter((x) => /^FROM\b/i.test(x.text ?? ""));
    if (stages.length < 2) fail("dockerfiles", `${f}: not a multi-stage build`);
    // The final stage: non-root, gRPC health check, /models volume.
    const lastFrom = ins.findLastIndex((x) => /^FROM\b/i.test(x.text ?? ""));
    const final = ins.slice(lastFrom).map((x) => x.text ?? "");
    const user = final.filter((t) => /^USER\b/.test(t)).pop();
    if (!user || /^USER\s+(root|0)(:|\s|$)/.test(user)) fail("dockerfiles", `${f}: the runtime stage runs as root`);
    if (!final.some((t) => /^HEALTHCHECK\b.*hearth health/.test(t))) fail("dockerfiles", `${f}: no HEALTHCHECK through \`hearth health\` (grpc.health.v1)`);
    if (!final.some((t) => /^VOLUME\b.*\/models/.test(t))) fail("dockerfiles", `${f}: /models is not a VOLUME`);
  }
}

// ---- metrics: names in PromQL vs a live scrape ------------------------------

const PROM_SYNTHETIC = new Set(["up", "scrape_duration_seconds", "scrape_samples_scraped"]);
const PROM_KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"]);
// Labels Prometheus or prometheus-operator attach to every series.
const TARGET_LABELS = new Set(["job", "instance", "namespace", "pod", "service", "container", "endpoint"]);

// Metric names and the label names each selector uses, from one expression.
export function promqlSelectors(expr) {
  let e = expr.replace(/<<\.\w+>>/g, "");
  const strings = [];
  e = e.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, (s) => { strings.push(s); return `"${strings.length - 1}"`; });
  e = e.replace(/\[[^\]]*\]/g, "");
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "");
  const out = [];
  const re = /(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?/g;
  for (const m of e.matchAll(re)) {
    if (m[3] && !m[2]) continue;  // a function or aggregation
    if (PROM_KEYWORDS.has(m[1])) continue;
    const labels = m[2] ? [...m[2].matchAll(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)/g)].map((x) => x[1]) : [];
    const values = m[2] ? [...m[2].matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"(\d+)"/g)].map((x) => [x[1], strings[Number(x[2])]]) : [];
    out.push({ name: m[1], labels, values });
  }
  return out;
}

function readScrape(dir) {
  const series = new Map();  // name -> Set(label names)
  for (const f of fs.readdirSync(dir)) {
    for (const line of fs.readFileSync(path.join(dir, f), "utf8").split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s/.exec(line);
      if (!m) continue;
      const set = series.get(m[1]) ?? new Set();
      for (const l of (m[3] ?? "").matchAll(/([a-zA-Z_]\w*)="/g)) set.add(l[1]);
      series.set(m[1], set);
    }
  }
  return series;
}

function checkMetrics() {
  if (!args.scrape) { fail("metrics", "needs --scrape DIR (live /metrics bodies; see deploy_metrics_test)"); return; }
  const series = readScrape(args.scrape);
  if (!series.size) { fail("metrics", `no samples in ${args.scrape}`); return; }
  const rules = readYaml(path.join(ROOT, "deploy/prometheus/rules/hearth.yml"));
  const recorded = new Set(rules.groups.flatMap((g) => g.rules.filter((r) => r.record).map((r) => r.record)));
  const jobs = new Set((readYaml(path.join(ROOT, "deploy/prometheus/prometheus.yml")).scrape_configs ?? []).map((j) => j.job_name));
  const exprs = [];  // [where, expr]
  const dash = JSON.parse(fs.readFileSync(path.join(ROOT, "deploy/grafana/dashboards/hearth.json"), "utf8"));
  const required = ["Request rate", "Queue size", "Queue time", "Batch size", "Time to first token", "Inter-token latency",
                    "Tokens per second", "KV-cache usage", "Errors by code", "Rate-limited requests"];
  for (const t of required) if (!dash.panels.some((p) => p.title === t)) fail("metrics", `dashboard: no "${t}" panel`);
  for (const p of dash.panels ?? []) {
    if (!(p.targets ?? []).length) fail("metrics", `dashboard panel "${p.title}" has no query`);
    for (const t of p.targets ?? []) exprs.push([`dashboard panel "${p.title}"`, t.expr]);
  }
  for (const v of dash.templating?.list ?? []) {
    const q = typeof v.query === "string" ? v.query : v.query?.query;
    const m = /label_values\(([^,]+),\s*(\w+)\)/.exec(q ?? "");
    if (m) exprs.push([`dashboard variable ${v.name}`, `${m[1]}{${m[2]}=""}`]);
  }
  for (const g of rules.groups) for (const r of g.rules) exprs.push([`rule ${r.record ?? r.alert}`, r.expr]);
  // Autoscaling: the HPA's metrics must be served by an adapter rule, whose
  // series must exist; KEDA's queries are PromQL.
  const adapter = readYaml(path.join(ROOT, "deploy/prometheus/prometheus-adapter.yaml"));
  const exposed = new Map();
  for (const r of adapter.rules?.custom ?? []) {
    exprs.push(["prometheus-adapter seriesQuery", r.seriesQuery]);
    exprs.push(["prometheus-adapter metricsQuery", r.metricsQuery.replace(/<<\.Series>>/g, "__series__")]);
    const metric = /^\s*([a-zA-Z_:][\w:]*)/.exec(r.seriesQuery)?.[1];
    const as = r.name?.matches ? metric.replace(new RegExp(r.name.matches), r.name.as ?? "$1") : metric;
    exposed.set(as.replace(/\$\{?1\}?/g, metric), metric);
  }
  for (const dir of overlays()) {
    let res;
    try { res = kustomize(dir, YAML); } catch { continue; }  // reported by the k8s check
    for (const hpa of res.filter((r) => r.kind === "HorizontalPodAutoscaler")) {
      for (const m of hpa.spec.metrics ?? []) {
        const metric = m.pods?.metric?.name ?? m.object?.metric?.name ?? m.external?.metric?.name;
        if (!metric) { if (m.type !== "Resource") fail("metrics", `${rel(dir)}: HPA metric of type ${m.type} has no name`); continue; }
        if (!exposed.has(metric)) fail("metrics", `${rel(dir)}: the HPA asks for ${metric}, which no prometheus-adapter rule exposes`);
        else exprs.push([`${rel(dir)} HPA`, exposed.get(metric)]);
      }
    }
    for (const so of res.filter((r) => r.kind === "ScaledObject")) {
      for (const t of so.spec.triggers ?? []) if (t.type === "prometheus") exprs.push([`${rel(dir)} ScaledObject`, t.metadata.query]);
    }
  }
  const seen = new Set();
  for (const [where, expr] of exprs) {
    // Labels an aggregation groups by must exist on a metric it aggregates.
    const metrics = promqlSelectors(expr).filter((x) => series.has(x.name)).map((x) => series.get(x.name));
    for (const m of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) {
      for (const label of m[1].split(",").map((x) => x.trim()).filter(Boolean)) {
        if (label === "le" || TARGET_LABELS.has(label) || /^<</.test(label) || !metrics.length) continue;
        if (!metrics.some((labels) => labels.has(label))) fail("metrics", `${where}: groups by "${label}", which none of its metrics has in the live scrape`);
      }
    }
    for (const sel of promqlSelectors(expr)) {
      if (sel.name === "__series__") continue;
      const key = `${where}|${sel.name}|${sel.labels}`;
      if (seen.has(key)) continue;
      seen.add(key);
      for (const [label, value] of sel.values ?? []) {
        if (label === "job" && !jobs.has(value.slice(1, -1))) fail("metrics", `${where}: job=${value} is not a job in deploy/prometheus/prometheus.yml`);
      }
      if (sel.name.includes(":")) {
        if (!recorded.has(sel.name)) fail("metrics", `${where}: ${sel.name} is not a recording rule in deploy/prometheus/rules/hearth.yml`);
        continue;
      }
      if (PROM_SYNTHETIC.has(sel.name)) continue;
      if (!series.has(sel.name)) { fail("metrics", `${where}: ${sel.name} is not in the live scrape`); continue; }
      for (const l of sel.labels) {
        if (!TARGET_LABELS.has(l) && !series.get(sel.name).has(l)) fail("metrics", `${where}: ${sel.name} has no label "${l}" in the live scrape`);
      }
    }
  }
  out.push(`metrics: ${seen.size} metric references checked against ${series.size} live series names`);
}

// ---- main ---------------------------------------------------------------------

const CHECKS = { compose: checkCompose, k8s: checkK8s, grafana: checkGrafana, prometheus: checkPrometheus, dockerfiles: checkDockerfiles, metrics: checkMetrics };

// Runs `checks` (default: all offline ones) on the tree at `root`; returns
// {failures, output} with one line per problem, as the command prints them.
export async function runChecks({ root, nodeModules, scrape = null, checks = [] }) {
  args = { root, nodeModules, scrape, checks };
  ROOT = root;
  if (NM !== nodeModules) {
    NM = nodeModules;
    req = createRequire(path.join(NM, "noop.js"));
    YAML = req("yaml");
    ({ kustomize, resourceId, KustomizeError } = await import("./kustomize.mjs"));
    ({ validateObject } = await import("./k8s_schema.mjs"));
    compiledSchema = null;
  }
  failures = 0;
  out = [];
  for (const c of checks.length ? checks : ["compose", "k8s", "grafana", "prometheus", "dockerfiles"]) {
    if (!CHECKS[c]) throw new Error(`deploy_check: unknown check ${c}`);
    const before = failures;
    try {
      await CHECKS[c]();
    } catch (e) {
      fail(c, e.stack ?? String(e));
    }
    out.push(`${failures === before ? "ok" : "FAILED"} ${c}`);
  }
  return { failures, output: out.join("\n") };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const missing = missingPackage(a.nodeModules);
  if (missing) {
    console.error(`deploy_check: npm package ${missing} is missing in ${a.nodeModules}; run scripts/setup`);
    process.exit(3);
  }
  if (a.checks[0] === "render") {
    const YAMLmod = createRequire(path.join(a.nodeModules, "noop.js"))("yaml");
    const { kustomize: k } = await import("./kustomize.mjs");
    for (const r of k(path.resolve(a.checks[1]), YAMLmod)) console.log(JSON.stringify(r));
    return;
  }
  let result;
  try {
    result = await runChecks(a);
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
  console.log(result.output);
  process.exit(result.failures ? 1 : 0);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
