#!/usr/bin/env python3
"""Numerics oracle: runs Hugging Face transformers on model folders hearth wrote.

    hf_logits.py REQUEST.json

REQUEST.json is {"cases": [{"model": "<folder>", "ids": [1, 2, 3]}, ...]}. For each
case the folder is loaded with AutoModelForCausalLM.from_pretrained (so the
config.json and model.safetensors must be exactly what transformers expects: a
Llama or Qwen2 folder, tied or untied embeddings, rope_scaling), run in float32
eager attention on the ids, and the output is printed to stdout as JSON:

    {"transformers": "4.46.3", "torch": "...",
     "results": [{"architecture": ..., "logits": [[...]],          # [T, V]
                  "hidden_states": [[[...]]],                      # L+1 x [T, H]
                  "attentions": [[[[...]]]]}]}                     # L x [heads, T, T]

Exit status 77 means transformers (or torch) is not installed, which the C++
test (common/model/hf_parity_test.cc) reports as a skip. Setup:

    apt-get install -y python3-torch
    scripts/setup   (creates .deps/py from tests/interop/requirements.txt)


(transformers 4.46.3 is the newest line that still runs on Debian's torch 1.13
and knows rope_scaling {"rope_type": "llama3"}; 4.40 predates llama3 scaling.)
"""
import json
import sys


def main() -> int:
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except Exception as e:  # ImportError, or a broken install.
        print(f"transformers unavailable: {e}", file=sys.stderr)
        return 77

    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    torch.manual_seed(0)
    results = []
    for case in request["cases"]:
        model = AutoModelForCausalLM.from_pretrained(
            case["model"], torch_dtype=torch.float32, attn_implementation="eager")
        model.eval()
        ids = torch.tensor([case["ids"]], dtype=torch.long)
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, output_attentions=True)
        results.append({
            "architecture": type(model).__name__,
            "logits": out.logits[0].tolist(),
            "hidden_states": [h[0].tolist() for h in out.hidden_states],
            "attentions": [a[0].tolist() for a in out.attentions],
        })
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
               "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
