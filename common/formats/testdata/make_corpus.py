#!/usr/bin/env python3
"""Regenerates the fuzz seed corpora (stdlib only; tiny files, < 4 KB each).

Seeds are valid files of each shape the reader handles plus a few near-misses,
so the fuzzer starts inside the interesting parts of the parser.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(tensors, metadata=None, order=None, lead=""):
    """tensors: {name: (dtype, shape, bytes)} laid out in `order` (default: name)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    data = b""
    for name in order or sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = lead + json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


def write(folder, name, blob):
    path = os.path.join(HERE, folder, name)
    with open(path, "wb") as f:
        f.write(blob.encode() if isinstance(blob, str) else blob)


def main():
    st = "safetensors_corpus"
    write(st, "empty.safetensors", safetensors({}, {"format": "pt"}))
    write(st, "f32.safetensors", safetensors(
        {"w": ("F32", [2, 2], struct.pack("<4f", 1, -2, 0.5, 3))}, {"format": "pt"}))
    write(st, "dtypes.safetensors", safetensors({
        "f64": ("F64", [], struct.pack("<d", 2.5)),
        "i64": ("I64", [2], struct.pack("<2q", -1, 1 << 40)),
        "i32": ("I32", [1, 2], struct.pack("<2i", 7, -7)),
        "f16": ("F16", [3], struct.pack("<3H", 0x3c00, 0xc000, 0x7bff)),
        "bf16": ("BF16", [1], struct.pack("<H", 0x3f80)),
        "i16": ("I16", [1], struct.pack("<h", -3)),
        "i8": ("I8", [2], b"\xff\x01"),
        "u8": ("U8", [3], b"\x00\x7f\xff"),
        "mask": ("BOOL", [2], b"\x01\x00"),
        "none": ("F32", [0, 4], b""),
    }, {"format": "pt", "note": "seed"},
        order=["f64", "i64", "i32", "f16", "bf16", "i16", "i8", "u8", "mask", "none"]))
    write(st, "reference_order.safetensors", safetensors({
        "weight": ("F32", [2], struct.pack("<2f", 1, 2)),
        "bias": ("F16", [1], struct.pack("<H", 0x3c00)),
    }, None, order=["weight", "bias"], lead="  "))
    hole = bytearray(safetensors({"a": ("U8", [4], b"abcd")}))
    write(st, "near_miss_trailing.safetensors", bytes(hole) + b"zz")

    hc = "hf_config_corpus"
    write(hc, "llama.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 320, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
        "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": [2, 3],
        "pad_token_id": 0,
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32,
                                "desc_act": False, "sym": True},
    }, indent=2))
    write(hc, "qwen2.json", json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 56,
        "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 7,
        "num_key_value_heads": 1, "vocab_size": 100, "use_sliding_window": False,
        "sliding_window": 4096, "rope_scaling": None, "torch_dtype": "float16",
    }))
    write(hc, "mistral.json", json.dumps({
        "model_type": "mistral", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 50,
        "sliding_window": None, "rope_scaling": {"type": "linear", "factor": 2.0},
    }))
    write(hc, "generation.json", json.dumps({
        "bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True, "temperature": 0.6,
        "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1, "max_new_tokens": 64,
    }))


if __name__ == "__main__":
    main()
