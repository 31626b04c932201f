#!/usr/bin/env python3
"""Independent check of hearth's GPTQ v1 and AWQ GEMM checkpoints.

Unpacks qweight/qzeros/scales/g_idx with numpy exactly as AutoGPTQ
(qlinear_cuda_old: zeros = ((qzeros >> 4j) & 0xF) + 1; w = scales[g_idx] *
(q - zeros[g_idx])) and AutoAWQ (packing_utils: AWQ_REVERSE_ORDER
[0, 4, 1, 5, 2, 6, 3, 7], no zero offset) document it, and compares the
result with the dequantized weights hearth uses (<folder>.dequant.safetensors,
written by quantize_model_test).

  quant_layout_check.py <gptq-or-awq-folder> [...]
"""
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I8": np.int8,
      "U8": np.uint8, "I64": np.int64, "BF16": None}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[base + b:base + e],
                                  dtype=DT[info["dtype"]]).reshape(info["shape"])
    return out, header.get("__metadata__", {})


def unpack_gptq(t, prefix, bits):
    per = 32 // bits
    mask = (1 << bits) - 1
    qweight = t[prefix + ".qweight"].view(np.uint32)
    qzeros = t[prefix + ".qzeros"].view(np.uint32)
    scales = t[prefix + ".scales"].astype(np.float32)
    g_idx = t[prefix + ".g_idx"].astype(np.int64)
    shifts = np.arange(per, dtype=np.uint32) * bits
    # qweight [in/per, out]: row r holds inputs r*per + j in bits bits*j.
    w = (qweight[:, None, :] >> shifts[None, :, None]) & mask
    w = w.reshape(-1, qweight.shape[1]).astype(np.float32)  # [in, out]
    z = (qzeros[:, :, None] >> shifts[None, None, :]) & mask
    z = z.reshape(qzeros.shape[0], -1).astype(np.float32) + 1  # [groups, out]
    deq = scales[g_idx] * (w - z[g_idx])  # [in, out]
    return deq.T


def unpack_awq(t, prefix, group):
    reverse = [0, 4, 1, 5, 2, 6, 3, 7]
    qweight = t[prefix + ".qweight"].view(np.uint32)
    qzeros = t[prefix + ".qzeros"].view(np.uint32)
    scales = t[prefix + ".scales"].astype(np.float32)
    shifts = np.arange(8, dtype=np.uint32) * 4

    def unpack(x):
        v = (x[:, :, None] >> shifts[None, None, :]) & 0xF  # nibble order
        v = v.reshape(x.shape[0], -1)
        # AutoAWQ: iweight[:, AWQ_REVERSE_ORDER tiled] restores column order.
        idx = (np.arange(v.shape[1]) // 8) * 8 + np.array(reverse)[
            np.arange(v.shape[1]) % 8]
        return v[:, idx].astype(np.float32)

    w = unpack(qweight)  # [in, out]
    z = unpack(qzeros)   # [groups, out]
    z = np.repeat(z, group, axis=0)
    s = np.repeat(scales, group, axis=0)
    return ((w - z) * s).T


def check(folder):
    cfg = json.load(open(folder + "/config.json"))
    qc = cfg["quantization_config"]
    tensors, meta = read_safetensors(folder + "/model.safetensors")
    assert meta.get("format") == "pt", meta
    ref, _ = read_safetensors(folder + ".dequant.safetensors")
    method = qc["quant_method"]
    if method == "gptq":
        standalone = json.load(open(folder + "/quantize_config.json"))
        for k in ("bits", "group_size", "desc_act", "sym"):
            assert k in standalone, k
        assert qc["checkpoint_format"] == "gptq"
    else:
        assert qc["version"] == "gemm" and qc["zero_point"] is True
        json.load(open(folder + "/quant_config.json"))
    worst = 0.0
    for name, w in ref.items():
        prefix = name[: -len(".weight")]
        if method == "gptq":
            deq = unpack_gptq(tensors, prefix, qc["bits"])
        else:
            deq = unpack_awq(tensors, prefix, qc["group_size"])
        assert deq.shape == w.shape, (name, deq.shape, w.shape)
        worst = max(worst, float(np.abs(deq - w).max()))
    print(f"{folder}: {method} {len(ref)} linears, max |diff| = {worst:g}")
    return worst == 0.0


if __name__ == "__main__":
    ok = all(check(f) for f in sys.argv[1:])
    sys.exit(0 if ok else 1)
