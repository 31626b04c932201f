// The offline deployment checks (tests/deploy/deploy_check.mjs) pass on the
// real tree and fail, naming the problem, on broken copies of it: a check that
// cannot fail would prove nothing. Also: tests/deploy/kustomize.mjs renders
// exactly what `kubectl kustomize` renders, where kubectl is installed.
//
//   node tests/deploy/deploy_test.mjs      (ctest: deploy_offline_test)
//
// Exit code 77 (a ctest skip) when the npm packages are not installed.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "../..");
const CHECK = path.join(here, "deploy_check.mjs");
const NM = process.env.HEARTH_NODE_MODULES ?? path.join(ROOT, ".deps/node/node_modules");

if (!fs.existsSync(path.join(NM, "yaml/package.json"))) {
  console.log(`SKIP: npm packages are missing in ${NM}; run scripts/setup`);
  process.exit(77);
}
const { runChecks, missingPackage } = await import("./deploy_check.mjs");
if (missingPackage(NM)) {
  console.log(`SKIP: npm package ${missingPackage(NM)} is missing in ${NM}; run scripts/setup`);
  process.exit(77);
}

// The checks run in this process (the same code the command runs), so that
// the schemas are loaded once for all the broken copies.
async function run(root, ...checks) {
  const r = await runChecks({ root, nodeModules: NM, checks });
  return { code: r.failures ? 1 : 0, out: r.output };
}

const hasPromtool = spawnSync("promtool", ["--version"]).status === 0;
const hasKubectl = spawnSync("kubectl", ["version", "--client"], { encoding: "utf8" }).status === 0;

// A copy of everything the checks read, to break.
function brokenCopy(edits) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-deploy-"));
  for (const p of ["docker-compose.yml", "docker-compose.gpu.yml", "deploy", "scripts/setup"]) {
    fs.cpSync(path.join(ROOT, p), path.join(dir, p), { recursive: true });
  }
  for (const [file, from, to] of edits) {
    const f = path.join(dir, file);
    const text = fs.readFileSync(f, "utf8");
    assert.ok(text.includes(from), `${file} does not contain ${JSON.stringify(from)} (the test is stale)`);
    fs.writeFileSync(f, text.replace(from, to));
  }
  return dir;
}

async function expectFailure(check, edits, ...messages) {
  const dir = brokenCopy(edits);
  try {
    const r = await run(dir, check);
    assert.equal(r.code, 1, `expected the ${check} check to fail:\n${r.out}`);
    for (const m of messages) assert.match(r.out, m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("the real tree passes every offline check", async () => {
  const r = await run(ROOT, "compose", "k8s", "grafana", "dockerfiles", ...(hasPromtool ? ["prometheus"] : []));
  assert.equal(r.code, 0, r.out);
  assert.doesNotMatch(r.out, /FAIL/);
});

test("an unchanged copy passes too (the harness itself breaks nothing)", async () => {
  const dir = brokenCopy([]);
  try {
    assert.equal((await run(dir, "compose", "k8s", "dockerfiles")).code, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("compose: a key the compose spec does not have", async () => {
  await expectFailure("compose", [["docker-compose.yml", "  grafana:\n    image:", "  grafana:\n    restart_policy: always\n    image:"]],
    /docker-compose\.yml: \/services\/grafana must NOT have additional properties \("restart_policy"\)/);
});

test("compose: a value of the wrong type", async () => {
  await expectFailure("compose", [["docker-compose.yml", `ports:\n      - "8001:8001"`, `ports: "8001:8001"`]],
    /\/services\/gateway\/ports must be array/);
});

test("compose: a worker Prometheus does not scrape", async () => {
  await expectFailure("compose", [["deploy/prometheus/prometheus.yml", `"worker-a:9002", "worker-b:9002"`, `"worker-a:9002"`]],
    /Prometheus does not scrape worker-b:9002/);
});

test("compose: the gateway not sent to both workers", async () => {
  await expectFailure("compose", [["docker-compose.yml", "--workers=worker-a:9001,worker-b:9001", "--workers=worker-a:9001"]],
    /the gateway's --workers does not list worker-b:9001/);
});

test("compose: the GPU override without a device reservation", async () => {
  await expectFailure("compose", [["docker-compose.gpu.yml", `              device_ids: ["1"]\n              capabilities: [gpu]`, `              device_ids: ["1"]\n              capabilities: [compute]`]],
    /worker worker-b reserves no GPU/);
});

test("compose: a mounted file that does not exist", async () => {
  await expectFailure("compose", [["docker-compose.yml", "./deploy/grafana/dashboards:", "./deploy/grafana/dashbords:"]],
    /grafana mounts \.\/deploy\/grafana\/dashbords, which does not exist/);
});

test("k8s: a misspelt field (strict, as the API server would refuse)", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/worker.yaml", "  replicas: 2", "  replica: 2"]],
    /Deployment\/hearth-worker\.spec: unknown field "replica"/);
});

test("k8s: a misspelt field inside a CRD (KEDA)", async () => {
  await expectFailure("k8s", [["deploy/k8s/components/keda/scaled-object.yaml", "      metadata:\n        serverAddress", "      metdata:\n        serverAddress"]],
    /ScaledObject\/hearth-worker\.spec\.triggers\[0\]: unknown field "metdata"/);
});

test("k8s: a value of the wrong type", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/gateway.yaml", "      port: 8001\n            periodSeconds: 2", "      port: eight\n            periodSeconds: 2"]],
    /startupProbe\/grpc\/port must be integer/);
});

test("k8s: a probe that is not the gRPC health check on the grpc port", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/worker.yaml", "livenessProbe:\n            grpc:\n              port: 9001", "livenessProbe:\n            grpc:\n              port: 9002"]],
    /hearth-worker\/worker's livenessProbe is not a gRPC health check on port 9001/);
});

test("k8s: a Service that selects no pods", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/gateway.yaml", "spec:\n  selector:\n    app.kubernetes.io/name: hearth-gateway", "spec:\n  selector:\n    app.kubernetes.io/name: hearth-gatway"]],
    /Service hearth-gateway selects no pods/);
});

test("k8s: the worker Service not headless", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/worker.yaml", "  clusterIP: None\n", ""]],
    /--workers_dns=hearth-worker:9001 must name a headless Service/);
});

test("k8s: gateway -> worker traffic not allowed", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/network-policy.yaml", "      ports:\n        - port: 9001", "      ports:\n        - port: 9003"]],
    /no NetworkPolicy lets the gateway reach the workers on 9001/);
});

test("k8s: an autoscaler aimed at a Deployment that does not exist", async () => {
  await expectFailure("k8s", [["deploy/k8s/components/hpa/hpa.yaml", "    name: hearth-worker\n  minReplicas", "    name: hearth-workers\n  minReplicas"]],
    /HorizontalPodAutoscaler hearth-worker scales Deployment\/hearth-workers, which does not exist/);
});

test("k8s: a config file the ConfigMap does not carry", async () => {
  await expectFailure("k8s", [["deploy/k8s/base/worker.yaml", "--config=/etc/hearth/config/worker.yaml", "--config=/etc/hearth/config/workers.yaml"]],
    /reads \/etc\/hearth\/config\/workers\.yaml, but ConfigMap hearth-config has no key workers\.yaml/);
});

test("k8s: a GPU overlay without nvidia.com/gpu", async () => {
  await expectFailure("k8s", [["deploy/k8s/overlays/gpu/worker-gpu.yaml", `              memory: 32Gi\n              nvidia.com/gpu: "1"`, `              memory: 32Gi`]],
    /overlays\/gpu: hearth-worker runs --devices=cuda:0 but does not request nvidia\.com\/gpu/);
});

test("k8s: PrometheusRule out of step with the rules file", async () => {
  await expectFailure("k8s", [["deploy/prometheus/rules/hearth.yml", "> 0.05", "> 0.1"]],
    /prometheus-rule\.yaml's spec differs from deploy\/prometheus\/rules\/hearth\.yml/);
});

test("k8s: a kustomization field the renderer does not implement", async () => {
  await expectFailure("k8s", [["deploy/k8s/overlays/cpu/kustomization.yaml", "namespace: hearth", "namespace: hearth\nnamePrefix: x-"]],
    /field "namePrefix" is not supported/);
});

test("k8s: a patch that matches nothing", async () => {
  await expectFailure("k8s", [["deploy/k8s/overlays/gpu/worker-gpu.yaml", "  name: hearth-worker", "  name: hearth-wroker"]],
    /no resource matches Deployment\/hearth-wroker/);
});

test("grafana: a dashboard on a datasource that is not provisioned", async () => {
  await expectFailure("grafana", [["deploy/grafana/provisioning/datasources/prometheus.yaml", "uid: hearth-prometheus", "uid: prometheus"]],
    /the dashboard uses datasource uid "hearth-prometheus"/);
});

test("grafana: dashboards mounted where the provider does not look", async () => {
  await expectFailure("grafana", [["docker-compose.yml", "./deploy/grafana/dashboards:/var/lib/grafana/dashboards", "./deploy/grafana/dashboards:/dashboards"]],
    /provider hearth reads \/var\/lib\/grafana\/dashboards/);
});

test("dockerfiles: a package scripts/setup installs is missing", async () => {
  await expectFailure("dockerfiles", [["deploy/docker/Dockerfile", " libyaml-cpp-dev", ""]],
    /Dockerfile: missing scripts\/setup packages: libyaml-cpp-dev/);
});

test("dockerfiles: scripts/setup gained a package the images lack", async () => {
  await expectFailure("dockerfiles", [["scripts/setup", "  nodejs npm\n", "  nodejs npm jq\n"]],
    /Dockerfile: missing scripts\/setup packages: jq/, /Dockerfile\.cuda: missing scripts\/setup packages: jq/);
});

test("dockerfiles: a runtime stage running as root", async () => {
  await expectFailure("dockerfiles", [["deploy/docker/Dockerfile.cuda", "USER 10001:10001", "USER root"]],
    /Dockerfile\.cuda: the runtime stage runs as root/);
});

test("prometheus: a rule promtool rejects", { skip: !hasPromtool && "promtool is not installed" }, async () => {
  await expectFailure("prometheus", [["deploy/prometheus/rules/hearth.yml", "expr: up{job=\"hearth-worker\"} == 0", "expr: up{job=\"hearth-worker\" == 0"]],
    /promtool check (config|rules)/);
});

test("prometheus: an alert that no longer fires when it should", { skip: !hasPromtool && "promtool is not installed" }, async () => {
  await expectFailure("prometheus", [["deploy/prometheus/rules/hearth.yml", "== 0\n        for: 1m", "== 0\n        for: 10m"]],
    /promtool test rules/, /HearthWorkerDown/);
});

test("prometheus: a scrape config promtool rejects", { skip: !hasPromtool && "promtool is not installed" }, async () => {
  await expectFailure("prometheus", [["deploy/prometheus/prometheus.yml", "scrape_interval: 5s", "scrape_interval: 5 seconds"]],
    /promtool check config/);
});

const BUILD = process.env.HEARTH_BUILD_DIR ?? path.join(ROOT, "build");
const built = fs.existsSync(path.join(BUILD, "services/gateway/hearth-gateway")) &&
  fs.existsSync(path.join(BUILD, "tools/hearth/hearth"));
test("stage-runtime derives the image's runtime packages from the built binaries",
     { skip: !built && `the services are not built in ${BUILD}` }, () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "hearth-stage-"));
  try {
    execFileSync(path.join(ROOT, "deploy/docker/stage-runtime"), [BUILD, out], { encoding: "utf8" });
    const pkgs = fs.readFileSync(path.join(out, "runtime-packages.txt"), "utf8").trim().split("\n");
    for (const want of [/^libc6$/, /^libtorch[\d.]+$/, /^libgrpc\+\+[\d.]+$/, /^libopenblas0-pthread$/, /^libyaml-cpp[\d.]+$/]) {
      assert.ok(pkgs.some((p) => want.test(p)), `no ${want} in ${pkgs.join(" ")}`);
    }
    // Runtime libraries only: no -dev package, no compiler.
    assert.deepEqual(pkgs.filter((p) => /-dev$|^(gcc|g\+\+|clang)/.test(p)), []);
    for (const b of ["hearth-gateway", "hearth-worker", "hearth-quantizer", "hearth-distiller", "hearth"]) {
      assert.ok(fs.existsSync(path.join(out, "bin", b)), `bin/${b} not staged`);
    }
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test("the renderer agrees with kubectl kustomize", { skip: !hasKubectl && "kubectl is not installed" }, () => {
  const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x));
  for (const overlay of fs.readdirSync(path.join(ROOT, "deploy/k8s/overlays"))) {
    const dir = path.join(ROOT, "deploy/k8s/overlays", overlay);
    const mine = execFileSync(process.execPath, [CHECK, "--node-modules", NM, "render", dir], { encoding: "utf8" })
      .trim().split("\n").map((l) => JSON.parse(l));
    const theirsYaml = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8" });
    const YAML = createRequire(path.join(NM, "noop.js"))("yaml");
    const theirs = YAML.parseAllDocuments(theirsYaml).map((d) => d.toJS()).filter(Boolean);
    const key = (r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`;
    const a = new Map(mine.map((r) => [key(r), canon(r)]));
    const b = new Map(theirs.map((r) => [key(r), canon(r)]));
    assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${overlay}: different objects`);
    for (const [k, v] of a) assert.equal(v, b.get(k), `${overlay}: ${k} differs from kubectl kustomize`);
  }
});
