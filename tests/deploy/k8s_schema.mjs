// Validates Kubernetes objects against the schemas in the npm packages
// kubernetes-models (core API), @kubernetes-models/prometheus-operator and
// @kubernetes-models/keda: first each model's own validate() (types, required
// fields, enums, formats), then a strict pass that the models leave out: every
// field must exist in the API, as `kubectl apply --validate=strict` demands,
// so that a misspelt field ("replica:", "livenessprobe:") is an error and not
// silently dropped by the API server. The field lists come from the packages'
// TypeScript declarations (generated from the same OpenAPI/CRD schemas).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const CRD_PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};

function modelDir(nodeModules, apiVersion) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (!group) return path.join(nodeModules, "kubernetes-models", version);
  const pkg = CRD_PACKAGES[group] ?? "kubernetes-models";
  return path.join(nodeModules, pkg, group, version);
}

// ---- a reader for the declarations' interfaces --------------------------

const parsed = new Map();

function stripComments(text) {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

function resolveImport(fromFile, spec, nodeModules) {
  let base;
  if (spec.startsWith(".")) base = path.resolve(path.dirname(fromFile), spec);
  else base = path.join(nodeModules, spec);
  base = base.replace(/\.js$/, "");
  for (const candidate of [`${base}.d.ts`, path.join(base, "index.d.ts")]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  return null;
}

// Splits an object-type body ("a"?: T; "b": U;) into [name, type] pairs.
function splitProps(body) {
  const props = new Map();
  let i = 0;
  let index = null;
  while (i < body.length) {
    const m = /^\s*(?:"([^"]+)"|(\w+))\??\s*:\s*/.exec(body.slice(i));
    const im = /^\s*\[key: string\]\s*:\s*/.exec(body.slice(i));
    if (!m && !im) {
      if (/^\s*$/.test(body.slice(i))) break;
      return null;  // something this reader does not understand: not strict
    }
    i += (m ?? im)[0].length;
    let depth = 0, j = i;
    for (; j < body.length; ++j) {
      const c = body[j];
      if ("<{([".includes(c)) depth++;
      else if (">})]".includes(c)) depth--;
      else if (c === ";" && depth === 0) break;
    }
    const type = body.slice(i, j).trim();
    if (im) index = type;
    else props.set(m[1] ?? m[2], type);
    i = j + 1;
  }
  return { props, index };
}

function parseFile(file, nodeModules) {
  if (parsed.has(file)) return parsed.get(file);
  const text = stripComments(fs.readFileSync(file, "utf8"));
  const imports = new Map();
  for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g)) {
    for (const name of m[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [orig, alias] = name.split(/\s+as\s+/);
      imports.set(alias ?? orig, resolveImport(file, m[2], nodeModules));
    }
  }
  let shape = null;
  const im = /export interface (\w+)(?: extends ([\w, ]+))?\s*\{/.exec(text);
  if (im) {
    let depth = 1, j = im.index + im[0].length;
    for (; j < text.length && depth > 0; ++j) {
      if (text[j] === "{") depth++;
      else if (text[j] === "}") depth--;
    }
    shape = splitProps(text.slice(im.index + im[0].length, j - 1));
    if (shape && /TypeMeta/.test(im[2] ?? "")) {
      shape.props.set("apiVersion", "string");
      shape.props.set("kind", "string");
    }
  }
  const result = { shape, imports, file };
  parsed.set(file, result);
  return result;
}

// A type, as far as strictness needs it: {object: shape}, {array: type},
// {map: type} or null (anything else: scalars, unions, free-form objects).
function typeOf(typeText, ctx, nodeModules) {
  let t = typeText.trim();
  t = t.replace(/\s*\|\s*null$/, "");
  let m = /^Array<([\s\S]*)>$/.exec(t);
  if (m) return { array: typeOf(m[1], ctx, nodeModules) };
  if (t.startsWith("{")) {
    const shape = splitProps(t.slice(1, -1));
    if (!shape) return null;
    if (shape.props.size === 0 && shape.index) return { map: typeOf(shape.index, ctx, nodeModules) };
    if (shape.index) return null;  // open object
    return { object: shape, ctx };
  }
  if (/^\w+$/.test(t) && ctx.imports.get(t)) {
    const f = parseFile(ctx.imports.get(t), nodeModules);
    if (!f.shape || f.shape.index) return null;
    return { object: f.shape, ctx: f };
  }
  return null;
}

function strictWalk(value, type, where, errors, nodeModules) {
  if (!type || value === null || value === undefined) return;
  if (type.array) {
    if (Array.isArray(value)) value.forEach((v, i) => strictWalk(v, type.array, `${where}[${i}]`, errors, nodeModules));
    return;
  }
  if (type.map) {
    if (typeof value === "object") for (const [k, v] of Object.entries(value)) strictWalk(v, type.map, `${where}.${k}`, errors, nodeModules);
    return;
  }
  if (type.object && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (!type.object.props.has(k)) {
        errors.push(`${where}: unknown field "${k}"`);
        continue;
      }
      strictWalk(v, typeOf(type.object.props.get(k), type.ctx, nodeModules), `${where}.${k}`, errors, nodeModules);
    }
  }
}

// Returns a list of error strings for one object (empty when valid).
export async function validateObject(obj, nodeModules) {
  const id = `${obj.kind}/${obj.metadata?.name}`;
  const dir = modelDir(nodeModules, obj.apiVersion ?? "");
  const dts = path.join(dir, `${obj.kind}.d.ts`);
  if (!fs.existsSync(dts)) return [`${id}: no schema for ${obj.apiVersion} ${obj.kind}`];
  const mod = await import(pathToFileURL(path.join(dir, `${obj.kind}.js`)).href);
  const Model = mod[obj.kind];
  const errors = [];
  try {
    new Model(obj).validate();
  } catch (e) {
    errors.push(`${id} (${obj.apiVersion}): ${e.message}`);
  }
  const file = parseFile(dts, nodeModules);
  if (!file.shape) return [...errors, `${id}: cannot read the schema of ${obj.kind}`];
  const strict = [];
  strictWalk(obj, { object: file.shape, ctx: file }, id, strict, nodeModules);
  return [...errors, ...strict];
}
