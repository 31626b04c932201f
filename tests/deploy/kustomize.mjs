// A small kustomize: renders deploy/k8s overlays without kubectl, for the
// offline validation in tests/deploy. It implements the subset hearth's
// manifests use and refuses everything else, so a kustomization that grows a
// feature it does not know fails loudly instead of rendering wrong:
//
//   resources (files, folders), components (kind: Component), namespace,
//   labels (pairs, without includeSelectors), images (newName/newTag),
//   configMapGenerator (files, literals; only with disableNameSuffixHash),
//   patches (strategic merge by kind/name, or JSON 6902 with a target).
//
// Where kubectl is installed, tests/deploy also renders with
// `kubectl kustomize` and requires the same objects.
import fs from "node:fs";
import path from "node:path";

const KNOWN_KEYS = new Set([
  "apiVersion", "kind", "resources", "components", "namespace", "labels",
  "images", "configMapGenerator", "generatorOptions", "patches",
]);
const CLUSTER_SCOPED = new Set([
  "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
  "StorageClass", "CustomResourceDefinition", "PriorityClass",
  "APIService", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
]);
// Strategic-merge keys of the list fields hearth patches (from the Kubernetes
// API's x-kubernetes-patch-merge-key); other lists are replaced whole.
const MERGE_KEYS = {
  containers: "name", initContainers: "name", volumes: "name", env: "name",
  imagePullSecrets: "name", volumeMounts: "mountPath", ports: "containerPort",
};

export class KustomizeError extends Error {}

function loadKustomization(dir, YAML) {
  for (const name of ["kustomization.yaml", "kustomization.yml", "Kustomization"]) {
    const file = path.join(dir, name);
    if (fs.existsSync(file)) {
      const k = YAML.parse(fs.readFileSync(file, "utf8")) ?? {};
      for (const key of Object.keys(k)) {
        if (!KNOWN_KEYS.has(key)) {
          throw new KustomizeError(`${file}: field "${key}" is not supported by tests/deploy/kustomize.mjs`);
        }
      }
      return { file, k };
    }
  }
  throw new KustomizeError(`${dir}: no kustomization.yaml`);
}

export function parseDocs(text, file, YAML) {
  const docs = [];
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) throw new KustomizeError(`${file}: ${doc.errors[0].message}`);
    const value = doc.toJS();
    if (value == null) continue;
    if (typeof value !== "object" || !value.kind || !value.metadata?.name) {
      throw new KustomizeError(`${file}: a resource needs kind and metadata.name`);
    }
    docs.push(value);
  }
  return docs;
}

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

export function strategicMerge(base, patch, key = "") {
  if (!isPlainObject(base) || !isPlainObject(patch)) {
    if (Array.isArray(base) && Array.isArray(patch) && MERGE_KEYS[key]) {
      const mk = MERGE_KEYS[key];
      const out = base.map((x) => structuredClone(x));
      for (const item of patch) {
        const i = out.findIndex((x) => isPlainObject(x) && x[mk] === item[mk]);
        if (i >= 0) out[i] = strategicMerge(out[i], item, "");
        else out.push(structuredClone(item));
      }
      return out;
    }
    return structuredClone(patch);
  }
  const out = structuredClone(base);
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (k in out) out[k] = strategicMerge(out[k], v, k);
    else out[k] = structuredClone(v);
  }
  return out;
}

function jsonPointer(obj, pointer, file) {
  const parts = pointer.split("/").slice(1).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
  const last = parts.pop();
  let parent = obj;
  for (const p of parts) {
    parent = parent?.[Array.isArray(parent) ? Number(p) : p];
    if (parent === undefined) throw new KustomizeError(`${file}: path ${pointer} does not exist`);
  }
  return { parent, last };
}

function applyJson6902(obj, ops, file) {
  for (const op of ops) {
    const { parent, last } = jsonPointer(obj, op.path, file);
    const index = Array.isArray(parent) ? (last === "-" ? parent.length : Number(last)) : last;
    switch (op.op) {
      case "add":
        if (Array.isArray(parent)) parent.splice(index, 0, structuredClone(op.value));
        else parent[index] = structuredClone(op.value);
        break;
      case "replace":
        if (!(index in parent)) throw new KustomizeError(`${file}: replace of missing ${op.path}`);
        parent[index] = structuredClone(op.value);
        break;
      case "remove":
        if (!(index in parent)) throw new KustomizeError(`${file}: remove of missing ${op.path}`);
        if (Array.isArray(parent)) parent.splice(index, 1);
        else delete parent[index];
        break;
      default:
        throw new KustomizeError(`${file}: JSON patch op "${op.op}" is not supported`);
    }
  }
}

function matchesTarget(res, target) {
  if (target.kind && res.kind !== target.kind) return false;
  if (target.name && !new RegExp(`^(?:${target.name})$`).test(res.metadata.name)) return false;
  if (target.namespace && res.metadata.namespace !== target.namespace) return false;
  if (target.version && !res.apiVersion.endsWith(target.version)) return false;
  if (target.group !== undefined) {
    const group = res.apiVersion.includes("/") ? res.apiVersion.split("/")[0] : "";
    if (group !== target.group) return false;
  }
  return true;
}

function podSpecs(res) {
  const spec = res.spec ?? {};
  if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"].includes(res.kind)) {
    return spec.template?.spec ? [spec.template.spec] : [];
  }
  if (res.kind === "CronJob") return spec.jobTemplate?.spec?.template?.spec ? [spec.jobTemplate.spec.template.spec] : [];
  if (res.kind === "Pod") return [spec];
  return [];
}

function splitImage(image) {
  let rest = image, digest = "";
  const at = rest.indexOf("@");
  if (at >= 0) { digest = rest.slice(at); rest = rest.slice(0, at); }
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  if (colon > slash) return { name: rest.slice(0, colon), tag: rest.slice(colon + 1), digest };
  return { name: rest, tag: "", digest };
}

function transform(resources, k, dir, file, YAML) {
  // Generators.
  for (const gen of k.configMapGenerator ?? []) {
    if (!k.generatorOptions?.disableNameSuffixHash) {
      throw new KustomizeError(`${file}: configMapGenerator without generatorOptions.disableNameSuffixHash is not supported`);
    }
    const data = {};
    for (const entry of gen.files ?? []) {
      const eq = entry.indexOf("=");
      const key = eq >= 0 ? entry.slice(0, eq) : path.basename(entry);
      const src = path.resolve(dir, eq >= 0 ? entry.slice(eq + 1) : entry);
      if (!src.startsWith(dir + path.sep)) {
        throw new KustomizeError(`${file}: ${entry} is not in or below ${dir} (kustomize refuses it)`);
      }
      if (!fs.existsSync(src)) throw new KustomizeError(`${file}: configMapGenerator file ${entry} does not exist`);
      data[key] = fs.readFileSync(src, "utf8");
    }
    for (const lit of gen.literals ?? []) {
      const eq = lit.indexOf("=");
      data[lit.slice(0, eq)] = lit.slice(eq + 1);
    }
    resources.push({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: gen.name }, data });
  }
  // Patches.
  for (const p of k.patches ?? []) {
    let text = p.patch;
    let where = `${file} (inline patch)`;
    if (p.path) {
      where = path.join(dir, p.path);
      if (!fs.existsSync(where)) throw new KustomizeError(`${file}: patch ${p.path} does not exist`);
      text = fs.readFileSync(where, "utf8");
    }
    const body = YAML.parse(text);
    if (Array.isArray(body)) {
      if (!p.target) throw new KustomizeError(`${where}: a JSON 6902 patch needs a target`);
      const hits = resources.filter((r) => matchesTarget(r, p.target));
      if (!hits.length) throw new KustomizeError(`${where}: no resource matches the patch target`);
      for (const r of hits) applyJson6902(r, body, where);
    } else {
      const target = p.target ?? { kind: body.kind, name: body.metadata?.name };
      const hits = resources.filter((r) => matchesTarget(r, target));
      if (!hits.length) {
        throw new KustomizeError(`${where}: no resource matches ${target.kind}/${target.name}`);
      }
      for (const r of hits) {
        const merged = strategicMerge(r, { ...body, metadata: { ...body.metadata, name: r.metadata.name } });
        Object.keys(r).forEach((key) => delete r[key]);
        Object.assign(r, merged);
      }
    }
  }
  // Namespace.
  if (k.namespace) {
    for (const r of resources) {
      if (!CLUSTER_SCOPED.has(r.kind)) r.metadata.namespace = k.namespace;
    }
  }
  // Labels (metadata only).
  for (const l of k.labels ?? []) {
    if (l.includeSelectors || l.includeTemplates) {
      throw new KustomizeError(`${file}: labels with includeSelectors/includeTemplates are not supported`);
    }
    for (const r of resources) r.metadata.labels = { ...(r.metadata.labels ?? {}), ...l.pairs };
  }
  // Images.
  for (const img of k.images ?? []) {
    for (const r of resources) {
      for (const spec of podSpecs(r)) {
        for (const c of [...(spec.initContainers ?? []), ...(spec.containers ?? [])]) {
          const parts = splitImage(c.image ?? "");
          if (parts.name !== img.name) continue;
          const name = img.newName ?? parts.name;
          const tag = img.newTag ?? parts.tag;
          c.image = name + (tag ? `:${tag}` : "") + (img.digest ? `@${img.digest}` : parts.digest);
        }
      }
    }
  }
}

function build(dir, YAML, seen) {
  dir = path.resolve(dir);
  if (seen.has(dir)) throw new KustomizeError(`${dir}: kustomization cycle`);
  seen = new Set(seen).add(dir);
  const { file, k } = loadKustomization(dir, YAML);
  const resources = [];
  for (const entry of k.resources ?? []) {
    const target = path.resolve(dir, entry);
    if (!fs.existsSync(target)) throw new KustomizeError(`${file}: resource ${entry} does not exist`);
    if (fs.statSync(target).isDirectory()) resources.push(...build(target, YAML, seen));
    else resources.push(...parseDocs(fs.readFileSync(target, "utf8"), target, YAML));
  }
  for (const entry of k.components ?? []) {
    const cdir = path.resolve(dir, entry);
    const { file: cfile, k: ck } = loadKustomization(cdir, YAML);
    if (ck.kind !== "Component") throw new KustomizeError(`${cfile}: a component must be kind: Component`);
    for (const r of ck.resources ?? []) {
      const target = path.resolve(cdir, r);
      if (!fs.existsSync(target)) throw new KustomizeError(`${cfile}: resource ${r} does not exist`);
      if (fs.statSync(target).isDirectory()) resources.push(...build(target, YAML, seen));
      else resources.push(...parseDocs(fs.readFileSync(target, "utf8"), target, YAML));
    }
    transform(resources, ck, cdir, cfile, YAML);
  }
  transform(resources, k, dir, file, YAML);
  const ids = new Set();
  for (const r of resources) {
    const id = resourceId(r);
    if (ids.has(id)) throw new KustomizeError(`${file}: ${id} is defined twice`);
    ids.add(id);
  }
  return resources;
}

export function resourceId(r) {
  return `${r.kind}/${r.metadata.namespace ?? ""}/${r.metadata.name}`;
}

// Renders the kustomization in `dir`; `YAML` is the npm "yaml" module.
export function kustomize(dir, YAML) {
  return build(dir, YAML, new Set());
}
