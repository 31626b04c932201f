#!/usr/bin/env bash
# The quantization table of docs/BENCHMARKS.md in one command: quantizes one
# model with every method through `hearth quantize --local` (a private
# hearth-quantizer per job, so each job's peak memory is its own), then
# measures every output and the float model with bench quant_eval, each in a
# fresh process, on the same held-out text, and prints a Markdown table.
#
#   bench/quant_report.sh [MODEL]            # default: hearth-student
#
# Env: MODELS (model repository, default models), BUILD (default build),
#      TEXT (a text file; default $MODELS/corpora/kjv.txt if present, else the
#      "licenses" corpus), SAMPLES / SEQ (calibration, default 64 x 256),
#      EVAL_SEQ / EVAL_WINDOWS (perplexity windows, default 256 x 16),
#      THREADS (quant_eval intra-op threads, default 1), OUT (JSON lines,
#      default $MODELS/<model>-quant-report.jsonl), REUSE=1 (measure the
#      outputs recorded in OUT again without re-quantizing).
#
# Rows: FP32, dynamic INT8, static W8A8 (SmoothQuant a=0.5), RTN-W4g128,
# GPTQ-W4g128 (act-order), AWQ-W4g128 (clip search), GGUF Q8_0, GGUF Q4_0.
# Columns: held-out perplexity (and vs FP32), mean KL divergence from FP32's
# next-token distributions (ranks methods whose perplexities tie), size on disk, resident linear
# weights (and vs FP32), RSS added by loading, decode tok/s at batch 1 and 16
# (and vs FP32), quantization wall time and the job's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-hearth-student}
MODELS=${MODELS:-models}
BUILD=${BUILD:-build}
SAMPLES=${SAMPLES:-64}
SEQ=${SEQ:-256}
EVAL_SEQ=${EVAL_SEQ:-256}
EVAL_WINDOWS=${EVAL_WINDOWS:-16}
THREADS=${THREADS:-1}
OUT=${OUT:-$MODELS/$MODEL-quant-report.jsonl}
HEARTH=$BUILD/tools/hearth/hearth
QUANTIZER=$BUILD/services/quantizer/hearth-quantizer
EVAL=$BUILD/bench/quant_eval
for exe in "$HEARTH" "$QUANTIZER" "$EVAL"; do
  [[ -x $exe ]] || { echo "missing $exe: cmake --build $BUILD --target hearth hearth-quantizer quant_eval" >&2; exit 1; }
done
[[ -f $MODELS/$MODEL/config.json ]] || { echo "no model $MODELS/$MODEL" >&2; exit 1; }
if [[ -z ${TEXT:-} && -f $MODELS/corpora/kjv.txt ]]; then TEXT=$MODELS/corpora/kjv.txt; fi
if [[ -n ${TEXT:-} ]]; then
  TEXT=$(realpath "$TEXT")
  calib=(--calibration_file="$TEXT")
  evaltext=(--text_file="$TEXT")
else
  calib=(--calibration_corpus=licenses)
  evaltext=(--corpus=licenses)
fi

if [[ -n ${REUSE:-} && -f $OUT ]]; then
  # Re-measure the outputs of the last run without quantizing again.
  grep -v '^{"eval"' "$OUT" > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  quantize() { :; }
else
  : > "$OUT"
fi
# quantize TAG FLAGS... : runs the job, appends {"row", "path", job metrics}.
[[ -n ${REUSE:-} ]] || quantize() {
  local tag=$1
  shift
  local log
  log=$(mktemp)
  local start
  start=$(date +%s.%N)
  if ! "$HEARTH" quantize --local --quantizer_binary="$QUANTIZER" \
      --model_repository="$MODELS" --model="$MODEL" "${calib[@]}" \
      --num_samples="$SAMPLES" --sequence_length="$SEQ" "$@" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  python3 - "$tag" "$start" "$log" >>"$OUT" <<'PY'
import json, re, sys, time
tag, log = sys.argv[1], open(sys.argv[3]).read()
wall = time.time() - float(sys.argv[2])
metrics = dict((m.group(1), float(m.group(2)))
               for m in re.finditer(r"^\s+(\w+)\s+([-+0-9.e]+)$", log, re.M))
arts = dict(re.findall(r"^\s+(\w+): (\S+)$", log, re.M))
print(json.dumps({"row": tag, "artifacts": arts, "job": metrics,
                  "cli_wall_seconds": wall}))
PY
  rm -f "$log"
}

echo "== quantizing $MODELS/$MODEL (calibration ${SAMPLES}x${SEQ})" >&2
quantize "dynamic INT8" --method=dynamic_int8 --bits=8 --group_size=0 --output_name="$MODEL-qr-dyn8"
quantize "static W8A8 (SQ 0.5)" --method=static_int8 --bits=8 --group_size=0 --smoothquant_alpha=0.5 --output_name="$MODEL-qr-w8a8"
quantize "RTN-W4g128" --method=rtn --bits=4 --group_size=128 --output_name="$MODEL-qr-rtn4"
quantize "GPTQ-W4g128" --method=gptq --bits=4 --group_size=128 --act_order --output_name="$MODEL-qr-gptq4"
quantize "AWQ-W4g128" --method=awq --bits=4 --group_size=128 --awq_clip --output_name="$MODEL-qr-awq4"
quantize "GGUF" --method=gguf --formats=gguf_q8_0,gguf_q4_0 --output_name="$MODEL-qr"

echo "== measuring (quant_eval, ${EVAL_WINDOWS} windows of ${EVAL_SEQ}, $THREADS thread(s))" >&2
python3 - "$OUT" "$EVAL" "$MODELS/$MODEL" "$THREADS" "$EVAL_SEQ" "$EVAL_WINDOWS" "${evaltext[@]}" <<'PY'
import json, subprocess, sys, os, datetime
out, ev, ref, threads, seq, windows, text = sys.argv[1:8]
jobs = [json.loads(l) for l in open(out)]
rows = [("FP32", ref, {})]
for j in jobs:
    if j["row"] == "GGUF":
        for role, path in sorted(j["artifacts"].items()):
            rows.append(("GGUF " + path.rsplit(".", 2)[-2], path, j["job"]))
    else:
        rows.append((j["row"], j["artifacts"]["model"], j["job"]))
results = []
for name, path, job in rows:
    r = subprocess.run([ev, f"--model={path}", f"--reference={ref}", text,
                        f"--threads={threads}", f"--seq_len={seq}",
                        f"--windows={windows}"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"quant_eval {path}: {r.stderr}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    m["row"], m["job"] = name, job
    results.append(m)
    print(f"  {name}: ppl {m['perplexity']:.4f}", file=sys.stderr)
with open(out, "a") as f:
    for m in results:
        f.write(json.dumps({"eval": m}) + "\n")
base = results[0]
MiB = 1048576.0
print(f"\n{ref}: {base['held_out_tokens']} held-out tokens, "
      f"{datetime.date.today()}, load average {os.getloadavg()[0]:.1f}\n")
print("| method | held-out ppl | vs FP32 | KL vs FP32 | disk MiB | linear weights MiB | vs FP32 "
      "| RSS MiB | tok/s b1 | vs FP32 | tok/s b16 | vs FP32 | quant s | quant peak MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in results:
    job = m["job"]
    qs = f"{job['quantization_seconds']:.1f}" if "quantization_seconds" in job else "-"
    qp = f"{job['peak_memory_bytes'] / MiB:.0f}" if "peak_memory_bytes" in job else "-"
    print(f"| {m['row']} | {m['perplexity']:.4f} | "
          f"{(m['perplexity'] / base['perplexity'] - 1) * 100:+.2f}% | "
          f"{m.get('kl_vs_reference', 0):.2e} | "
          f"{m['disk_bytes'] / MiB:.2f} | {m['layer_weight_bytes'] / MiB:.2f} | "
          f"{m['layer_weight_bytes'] / base['layer_weight_bytes']:.3f}x | "
          f"{m['rss_model_bytes'] / MiB:.1f} | "
          f"{m['decode_tokens_per_second_b1']:.1f} | "
          f"{m['decode_tokens_per_second_b1'] / base['decode_tokens_per_second_b1']:.2f}x | "
          f"{m['decode_tokens_per_second_b16']:.1f} | "
          f"{m['decode_tokens_per_second_b16'] / base['decode_tokens_per_second_b16']:.2f}x | "
          f"{qs} | {qp} |")
PY
