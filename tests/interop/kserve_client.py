#!/usr/bin/env python3
"""A KServe v2 client generated from hearth's .proto at run time.

Generates Python stubs for proto/inference/grpc_service.proto with grpc_tools
(Debian: python3-grpc-tools), then sends ModelInfer with a BYTES `text_input`
(and a max_tokens INT32 input) to hearth-gateway and prints the `text_output`.
Exits non-zero when anything is off. Used by
tests/integration/gateway_integration_test.cc.

  kserve_client.py --addr=127.0.0.1:8001 --key=hk_... --model=tiny \
      --proto_root=proto --work_dir=/tmp/x [--raw]
"""
import argparse
import os
import struct
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default="Hello")
    parser.add_argument("--max_tokens", type=int, default=8)
    parser.add_argument("--proto_root", required=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--raw", action="store_true",
                        help="send tensors in raw_input_contents")
    args = parser.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc",
         "-I", args.proto_root,
         "--python_out", args.work_dir,
         "--grpc_python_out", args.work_dir,
         os.path.join(args.proto_root, "inference", "grpc_service.proto")],
        check=True)
    sys.path.insert(0, args.work_dir)
    import grpc  # noqa: E402
    from inference import grpc_service_pb2 as pb  # noqa: E402
    from inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

    channel = grpc.insecure_channel(args.addr)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    metadata = [("authorization", "Bearer " + args.key)] if args.key else []

    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model),
                              metadata=metadata, timeout=30)
    assert meta.inputs[0].name == "text_input", meta
    assert meta.outputs[0].name == "text_output", meta

    request = pb.ModelInferRequest(model_name=args.model, id="py-1")
    text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    max_tokens = request.inputs.add(name="max_tokens", datatype="INT32",
                                    shape=[1])
    prompt = args.prompt.encode("utf-8")
    if args.raw:
        request.raw_input_contents.append(struct.pack("<I", len(prompt)) +
                                          prompt)
        request.raw_input_contents.append(struct.pack("<i", args.max_tokens))
    else:
        text.contents.bytes_contents.append(prompt)
        max_tokens.contents.int_contents.append(args.max_tokens)
    request.parameters["temperature"].double_param = 0.0

    response = stub.ModelInfer(request, metadata=metadata, timeout=60)
    assert response.id == "py-1", response
    assert response.outputs[0].name == "text_output", response
    assert response.outputs[0].datatype == "BYTES", response
    if args.raw:
        raw = response.raw_output_contents[0]
        (length,) = struct.unpack("<I", raw[:4])
        output = raw[4:4 + length]
    else:
        output = response.outputs[0].contents.bytes_contents[0]
    print("text_output:", repr(output.decode("utf-8", "replace")))
    if not output:
        print("empty text_output", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
