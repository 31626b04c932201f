// llama.cpp's side of hearth's GGUF interop test (driven by gguf_check.py).
//
// Loads a GGUF with node-llama-cpp (llama.cpp's C++ behind a Node binding), and
// for a request file
//
//   {"model": "m.gguf", "tokenize": ["text", ...], "hf_tokenizer": "tokenizer.json",
//    "hf_tokenizer_config": "tokenizer_config.json", "evaluate": [ids...],
//    "logits_out": "out.f32", "continue": [[ids...], ...], "continue_tokens": 32}
//
// prints {"n_vocab", "bos", "add_bos", "tokenize": [{"text", "llama_cpp", "hf"}],
// "evaluated": n} on stdout and writes the logits of every evaluated position
// as float32 [n, n_vocab] to logits_out. "hf" are the ids of the same text from
// @lenml/tokenizers (transformers.js' tokenizer) reading tokenizer.json, without
// special tokens, so the caller can check that llama.cpp tokenizes as HF does.
// "continue" asks for llama.cpp's greedy continuation of each prompt (argmax of
// its logits, ties to the lower id, EOS ignored), printed as "continued":
// [{"tokens": [...], "margins": [top-1 minus top-2 logit at each step]}].
//
// The KV cache is F32 and flash attention off so that logits can be compared
// tightly with a float reference (an F16 cache moves them by ~2e-4).
//
// With "windows": [[ids...], ...] it also prints "perplexity": exp of the mean
// next-token negative log-likelihood over every window (each evaluated from an
// empty context, as hearth's Perplexity() does), and "window_mean_nll".
//
// Usage: node gguf_llama_cpp.mjs <request.json> [--node-modules DIR]
// Exit code 3: node-llama-cpp or @lenml/tokenizers is not installed (skip).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

// A context whose logits can be compared tightly with a float reference.
function createExactContext(model, contextSize) {
  return model.createContext({
    contextSize,
    batchSize: 256,
    threads: 2,
    // The CPU flash-attention kernel works in F16; off for float-exact logits.
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
}

async function main() {
  const argv = process.argv.slice(2);
  let nodeModules = path.resolve(here, "../../.deps/node/node_modules");
  const rest = [];
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === "--node-modules") nodeModules = path.resolve(argv[++i]);
    else rest.push(argv[i]);
  }
  if (rest.length !== 1) {
    console.error("usage: node gguf_llama_cpp.mjs <request.json> [--node-modules DIR]");
    process.exit(2);
  }
  const request = JSON.parse(fs.readFileSync(rest[0], "utf8"));

  // ES-module imports ignore NODE_PATH: import the packages by file path.
  const llamaEntry = path.join(nodeModules, "node-llama-cpp", "dist", "index.js");
  const lenmlEntry = path.join(nodeModules, "@lenml", "tokenizers", "dist", "main.mjs");
  if (!fs.existsSync(llamaEntry) || !fs.existsSync(lenmlEntry)) {
    console.error(`node-llama-cpp / @lenml/tokenizers not found under ${nodeModules}`);
    process.exit(3);
  }
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(llamaEntry).href);
  const { TokenizerLoader } = await import(pathToFileURL(lenmlEntry).href);

  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: request.model, gpuLayers: 0 });

  const result = {
    n_vocab: null,
    bos: model.tokens.bos,
    add_bos: model.tokens.shouldPrependBosToken,
    tokenize: [],
    evaluated: 0,
  };

  if (request.tokenize && request.tokenize.length > 0) {
    const hf = TokenizerLoader.fromPreTrained({
      tokenizerJSON: JSON.parse(fs.readFileSync(request.hf_tokenizer, "utf8")),
      tokenizerConfig: request.hf_tokenizer_config
        ? JSON.parse(fs.readFileSync(request.hf_tokenizer_config, "utf8"))
        : {},
    });
    for (const text of request.tokenize) {
      result.tokenize.push({
        text,
        llama_cpp: Array.from(model.tokenize(text, false)),
        hf: Array.from(hf.encode(text, { add_special_tokens: false })),
      });
    }
  }

  if (request.continue && request.continue.length > 0) {
    result.continued = [];
    const n = request.continue_tokens ?? 32;
    for (const prompt of request.continue) {
      const context = await createExactContext(model, Math.max(256, prompt.length + n + 8));
      const sequence = context.getSequence();
      const tokens = [];
      const margins = [];
      let input = prompt.map((id, i) => [
        id,
        i === prompt.length - 1 ? { generateNext: { logits: true } } : {},
      ]);
      for (let step = 0; step < n; ++step) {
        const out = await sequence.controlledEvaluate(input);
        const logits = out[out.length - 1]?.next?.logits;
        if (!logits) throw new Error(`no logits at continuation step ${step}`);
        let best = -1;
        let bestValue = -Infinity;
        let second = -Infinity;
        for (const [token, value] of logits) {
          if (value > bestValue || (value === bestValue && token < best)) {
            if (best >= 0) second = Math.max(second, bestValue);
            best = token;
            bestValue = value;
          } else {
            second = Math.max(second, value);
          }
        }
        tokens.push(best);
        margins.push(bestValue - second);
        input = [[best, { generateNext: { logits: true } }]];
      }
      result.continued.push({ tokens, margins });
      await context.dispose();
    }
  }

  if (request.evaluate && request.evaluate.length > 0) {
    const context = await createExactContext(model, 256);
    const sequence = context.getSequence();
    const input = request.evaluate.map((id) => [id, { generateNext: { logits: true } }]);
    const out = await sequence.controlledEvaluate(input);
    const nVocab = out[0]?.next?.logits?.size ?? 0;
    result.n_vocab = nVocab;
    const logits = new Float32Array(request.evaluate.length * nVocab);
    for (let i = 0; i < request.evaluate.length; ++i) {
      const m = out[i]?.next?.logits;
      if (!m || m.size !== nVocab) throw new Error(`no logits for position ${i}`);
      for (const [token, value] of m) logits[i * nVocab + token] = value;
    }
    fs.writeFileSync(request.logits_out, Buffer.from(logits.buffer));
    result.evaluated = request.evaluate.length;
    await context.dispose();
  }
  if (request.windows && request.windows.length > 0) {
    // Held-out perplexity from llama.cpp's own logits: each window from an
    // empty context; every position but the last predicts the next token.
    const size = Math.max(...request.windows.map((w) => w.length));
    const context = await model.createContext({
      contextSize: size,
      batchSize: size,
      threads: 2,
      flashAttention: false,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
    const sequence = context.getSequence();
    let nll = 0;
    let count = 0;
    const nllPerWindow = [];
    for (const window of request.windows) {
      await sequence.clearHistory();
      const input = window.map((id, i) =>
        i + 1 < window.length ? [id, { generateNext: { logits: true } }] : id,
      );
      const out = await sequence.controlledEvaluate(input);
      let windowNll = 0;
      for (let i = 0; i + 1 < window.length; ++i) {
        const m = out[i]?.next?.logits;
        if (!m) throw new Error(`no logits for window position ${i}`);
        let max = -Infinity;
        for (const [, v] of m) max = Math.max(max, v);
        let sum = 0;
        for (const [, v] of m) sum += Math.exp(v - max);
        const target = m.get(window[i + 1]);
        if (target === undefined) throw new Error(`no logit for token ${window[i + 1]}`);
        windowNll += Math.log(sum) + max - target;
      }
      nllPerWindow.push(windowNll / (window.length - 1));
      nll += windowNll;
      count += window.length - 1;
    }
    result.perplexity = Math.exp(nll / count);
    result.window_mean_nll = nllPerWindow;
    result.evaluated_positions = count;
    await context.dispose();
  }
  await model.dispose();
  await llama.dispose();
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
