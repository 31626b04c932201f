// llama.cpp's side of bench_worker (bench/worker_bench.cc): the same GGUF model,
// prompts, token counts and threads, with C parallel sequences in one llama.cpp
// context (node-llama-cpp batches the sequences' tokens into shared decode
// calls, as llama-server does with its slots).
//
// Usage: node worker_llama_cpp.mjs --model m.gguf [--levels 1,4,16,64]
//            [--prompt 32] [--tokens 64] [--threads 2] [--node-modules DIR]
//            [--out results.json]
// Writes {"levels": [{"streams", "aggregate_tps", "ttft_mean_s", "ttft_max_s",
// "per_stream_tps"}], "binary": "..."} to --out (default: stdout); progress goes
// to stderr. Exit 3 when node-llama-cpp is not installed.
//
// The prebuilt node-llama-cpp CPU binary is built for generic x86-64; a native
// (-march=native) llama.cpp build is typically 2-3x faster.
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = {
    model: null,
    levels: [1, 4, 16, 64],
    prompt: 32,
    tokens: 64,
    threads: 2,
    nodeModules: path.resolve(here, "../.deps/node/node_modules"),
    out: null,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--model") args.model = value;
    else if (flag === "--levels") args.levels = value.split(",").map(Number);
    else if (flag === "--prompt") args.prompt = Number(value);
    else if (flag === "--tokens") args.tokens = Number(value);
    else if (flag === "--threads") args.threads = Number(value);
    else if (flag === "--node-modules") args.nodeModules = path.resolve(value);
    else if (flag === "--out") args.out = value;
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!args.model) throw new Error("--model is required");
  return args;
}

// Same ids as PromptIds() in worker_bench.cc.
function promptIds(i, n) {
  const ids = [];
  for (let t = 0; t < n; ++t) ids.push((i * 7919 + t * 104729 + 13) % 256);
  return ids;
}

async function runLevel(model, streams, args) {
  const context = await model.createContext({
    sequences: streams,
    // Per sequence: node-llama-cpp gives every sequence its own contextSize
    // cells (llama.cpp's n_ctx is contextSize * sequences).
    contextSize: args.prompt + args.tokens + 16,
    batchSize: Math.max(512, streams),
    threads: args.threads,
    flashAttention: false,
  });
  const sequences = [];
  for (let i = 0; i < streams; ++i) sequences.push(context.getSequence());
  const start = performance.now();
  const results = await Promise.all(
    sequences.map(async (sequence, i) => {
      let first = null;
      let last = null;
      let n = 0;
      for await (const token of sequence.evaluate(promptIds(i, args.prompt), {
        temperature: 0,
      })) {
        void token;
        const now = performance.now();
        if (first === null) first = now;
        last = now;
        if (++n >= args.tokens) break;
      }
      return { first, last, n };
    }),
  );
  let tokens = 0;
  let end = start;
  let ttftSum = 0;
  let ttftMax = 0;
  let rateSum = 0;
  for (const r of results) {
    tokens += r.n;
    end = Math.max(end, r.last);
    const ttft = (r.first - start) / 1000;
    ttftSum += ttft;
    ttftMax = Math.max(ttftMax, ttft);
    if (r.n > 1 && r.last > r.first) rateSum += (r.n - 1) / ((r.last - r.first) / 1000);
  }
  await context.dispose();
  const wall = (end - start) / 1000;
  return {
    streams,
    aggregate_tps: tokens / wall,
    ttft_mean_s: ttftSum / streams,
    ttft_max_s: ttftMax,
    per_stream_tps: rateSum / streams,
    tokens,
    wall_s: wall,
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const entry = path.join(args.nodeModules, "node-llama-cpp", "dist", "index.js");
  if (!fs.existsSync(entry)) {
    console.error(`node-llama-cpp not found under ${args.nodeModules}`);
    process.exit(3);
  }
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
  const llama = await getLlama({
    gpu: false,
    build: "never",
    logLevel: LlamaLogLevel.error,
    maxThreads: args.threads,
  });
  const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
  // Warm-up, not reported.
  await runLevel(model, 1, { ...args, tokens: 8 });
  const levels = [];
  for (const streams of args.levels) {
    const level = await runLevel(model, streams, args);
    levels.push(level);
    console.error(
      `llama.cpp ${String(streams).padStart(3)} streams: aggregate ${level.aggregate_tps.toFixed(1)} tok/s | ` +
        `TTFT mean ${level.ttft_mean_s.toFixed(3)} s | per-stream ${level.per_stream_tps.toFixed(1)} tok/s`,
    );
  }
  const result =
    JSON.stringify({ levels, binary: llama.buildType ?? "prebuilt", threads: args.threads }) + "\n";
  if (args.out) fs.writeFileSync(args.out, result);
  else process.stdout.write(result);
  await model.dispose();
  await llama.dispose();
}

main().catch((e) => {
  console.error(e?.stack ?? String(e));
  process.exit(1);
});
