#!/usr/bin/env python3
"""Triton's own Python client (tritonclient[grpc]) against hearth-gateway.

ServerLive, ServerReady, ModelMetadata, ModelInfer with a BYTES text_input
(and an INT32 max_tokens input) -> BYTES text_output, then one streaming
request over ModelStreamInfer collected until the response flagged
triton_final_response. Prints what it got; exits 0 only when every step
returned what the KServe v2 / Triton LLM convention says, 2 when tritonclient
is not installed (the caller skips). Used by
tests/integration/gateway_integration_test.cc.

  tritonclient_kserve.py --addr=127.0.0.1:8001 --key=hk_... --model=tiny
"""
import argparse
import queue
import sys


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max_tokens", type=int, default=6)
    args = parser.parse_args()
    try:
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as e:
        print("SKIP: tritonclient[grpc] is not installed: %s" % e)
        sys.exit(2)

    headers = {"authorization": "Bearer " + args.key} if args.key else None
    client = grpcclient.InferenceServerClient(url=args.addr)
    if not client.is_server_live(headers=headers):
        fail("ServerLive said not live")
    if not client.is_server_ready(headers=headers):
        fail("ServerReady said not ready")
    if not client.is_model_ready(args.model, headers=headers):
        fail("ModelReady said %s is not ready" % args.model)
    meta = client.get_model_metadata(args.model, headers=headers,
                                     as_json=True)
    inputs = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
    outputs = {t["name"]: t["datatype"] for t in meta.get("outputs", [])}
    print("metadata: name=%s inputs=%s outputs=%s" %
          (meta.get("name"), sorted(inputs), sorted(outputs)))
    if meta.get("name") != args.model:
        fail("metadata name %r" % meta.get("name"))
    if inputs.get("text_input") != "BYTES" or \
            outputs.get("text_output") != "BYTES":
        fail("metadata lacks BYTES text_input/text_output")

    def request_inputs(stream):
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(
            np.array([args.prompt.encode("utf-8")], dtype=np.object_))
        max_tokens = grpcclient.InferInput("max_tokens", [1], "INT32")
        max_tokens.set_data_from_numpy(
            np.array([args.max_tokens], dtype=np.int32))
        out = [text, max_tokens]
        if stream is not None:
            flag = grpcclient.InferInput("stream", [1], "BOOL")
            flag.set_data_from_numpy(np.array([stream], dtype=bool))
            out.append(flag)
        return out

    result = client.infer(
        args.model, request_inputs(None),
        outputs=[grpcclient.InferRequestedOutput("text_output")],
        headers=headers, client_timeout=60)
    text = result.as_numpy("text_output")
    if text is None or text.size != 1:
        fail("ModelInfer returned no text_output")
    completion = text.reshape(-1)[0]
    completion = completion.decode("utf-8") if isinstance(
        completion, bytes) else str(completion)
    print("text_output: %r" % completion)
    if not completion:
        fail("empty text_output")

    # A bad request is reported as an exception naming the input.
    bad = grpcclient.InferInput("text_input", [1], "INT32")
    bad.set_data_from_numpy(np.array([1], dtype=np.int32))
    try:
        client.infer(args.model, [bad], headers=headers, client_timeout=30)
        fail("a text_input of INT32 was accepted")
    except InferenceServerException as e:
        print("bad input: %s" % e.message())
        if "text_input" not in (e.message() or ""):
            fail("error does not name text_input: %s" % e.message())

    # Streaming: token by token until the final flag.
    responses = queue.Queue()
    client.start_stream(
        callback=lambda result, error: responses.put((result, error)),
        headers=headers)
    client.async_stream_infer(args.model, request_inputs(True),
                              request_id="s1",
                              outputs=[grpcclient.InferRequestedOutput(
                                  "text_output")],
                              enable_empty_final_response=True)
    pieces = []
    final = False
    while not final:
        try:
            r, e = responses.get(timeout=30)
        except queue.Empty:
            fail("stream: no final response within 30 s")
        if e is not None:
            fail("stream error: %s" % e)
        params = r.get_response().parameters
        final = "triton_final_response" in params and \
            params["triton_final_response"].bool_param
        piece = r.as_numpy("text_output")
        if piece is not None and piece.size:
            value = piece.reshape(-1)[0]
            pieces.append(value.decode("utf-8") if isinstance(value, bytes)
                          else str(value))
        if r.get_response().id not in ("s1", ""):
            fail("stream response id %r" % r.get_response().id)
    client.stop_stream()
    streamed = "".join(pieces)
    print("stream: %d responses, text %r" % (len(pieces), streamed))
    # Consecutive tokens may be coalesced into one response while a write is
    # in flight, so the count is not checked; the text and the final flag are.
    if not pieces or not streamed:
        fail("stream delivered no text")
    if streamed != completion:
        fail("greedy stream %r differs from ModelInfer %r" %
             (streamed, completion))
    client.close()
    print("OK")


if __name__ == "__main__":
    main()
