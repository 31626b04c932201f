#!/usr/bin/env python3
"""Regenerates the GGUF fuzz seed corpus (gguf_corpus/; stdlib only, < 4 KB each).

The seeds are small valid GGUF files covering every metadata type, string
arrays, a custom alignment, version 2, and tensors of F32/F16/Q8_0/Q4_0/Q4_K/
Q6_K, so that the fuzzer starts deep inside the reader rather than at the magic.
They are written by hand here (not by hearth's writer) so a writer bug cannot
hide in the seeds. The files are named *.seed because .gitignore drops *.gguf.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "gguf_corpus")

# gguf value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# ggml types: (id, block elems, bytes per block)
GGML = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q8_0": (8, 32, 34),
        "q4_K": (12, 256, 144), "q6_K": (14, 256, 210)}


def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == STR:
        return s(v)
    if vtype == ARR:
        etype, items = v
        out = struct.pack("<IQ", etype, len(items))
        for item in items:
            out += value(etype, item)
        return out
    return struct.pack(SCALAR[vtype], v)


def gguf(kvs, tensors, version=3, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += s(key) + struct.pack("<I", vtype) + value(vtype, v)
    offset, blobs = 0, []
    for name, ggml, ne, data in tensors:
        tid, block, size = GGML[ggml]
        nbytes = size * (ne[0] // block)
        for d in ne[1:]:
            nbytes *= d
        data = (data * (nbytes // max(len(data), 1) + 1))[:nbytes]
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", tid, offset)
        blobs.append(data + b"\0" * ((-nbytes) % alignment))
        offset += nbytes + (-nbytes) % alignment
    out += b"\0" * ((-len(out)) % alignment)
    return out + b"".join(blobs)


def half(x):
    return struct.pack("<e", x)


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "empty.seed": gguf([], []),
        "all_types.seed": gguf(
            [("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -3),
             ("u32", U32, 7), ("i32", I32, -7), ("f32", F32, 1.5), ("bool", BOOL, 1),
             ("str", STR, "llama"), ("u64", U64, 1 << 40), ("i64", I64, -1), ("f64", F64, 0.1),
             ("tokens", ARR, (STR, ["<unk>", "<s>", "\u2581a", ""])),
             ("scores", ARR, (F32, [0.0, -1.0, -2.5])),
             ("types", ARR, (I32, [2, 3, 1])),
             ("empty", ARR, (U32, []))],
            []),
        "v2.seed": gguf([("general.architecture", STR, "llama")],
                        [("w", "f32", [4], struct.pack("<4f", 1, 2, 3, 4))], version=2),
        "align64.seed": gguf([("general.alignment", U32, 64)],
                             [("a", "f32", [3], struct.pack("<3f", 1, 2, 3)),
                              ("b", "f16", [2, 2], half(1.0) * 4)], alignment=64),
        "quants.seed": gguf(
            [("general.architecture", STR, "llama"), ("general.file_type", U32, 7)],
            [("q8", "q8_0", [32, 2], half(0.01) + bytes(range(32))),
             ("q4", "q4_0", [64], half(-0.5) + bytes(range(0, 256, 16))),
             ("norm", "f32", [8], struct.pack("<8f", *range(8)))]),
        "kquants.seed": gguf(
            [],
            [("k4", "q4_K", [256], half(0.01) + half(0.02) + bytes(range(140))),
             ("k6", "q6_K", [256], bytes(range(208)) + half(0.5))]),
        "llama_keys.seed": gguf(
            [("general.architecture", STR, "llama"), ("llama.block_count", U32, 1),
             ("llama.embedding_length", U32, 32), ("llama.attention.head_count", U32, 2),
             ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
             ("tokenizer.ggml.model", STR, "llama")],
            [("token_embd.weight", "q8_0", [32, 4], half(0.1) + bytes(32)),
             ("blk.0.attn_q.weight", "q4_0", [32, 32], half(0.1) + bytes(16))]),
    }
    for name, data in seeds.items():
        assert len(data) < 4096, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
