// A Node.js client of hearth.v1.Generation, built at run time from the .proto
// with @grpc/grpc-js and @grpc/proto-loader (the stack most Node services
// use), against a real hearth-gateway: Generate, then GenerateStream with the
// same greedy request, which must give the same text chunk by chunk.
//
// Usage: node node_generation_client.cjs --addr HOST:PORT --key KEY
//            --model NAME --proto-root DIR [--node-modules DIR]
// Prints what it got and "OK"; exit 1 on any mismatch, 3 when the npm
// packages are not installed (the C++ test skips). Used by
// tests/integration/gateway_integration_test.cc.
"use strict";
const path = require("node:path");

function parseArgs(argv) {
  const args = {
    nodeModules: path.resolve(__dirname, "../../.deps/node/node_modules"),
    maxNewTokens: 6,
    prompt: "Once upon a time",
  };
  for (let i = 2; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === "--addr") args.addr = next();
    else if (a === "--key") args.key = next();
    else if (a === "--model") args.model = next();
    else if (a === "--proto-root") args.protoRoot = path.resolve(next());
    else if (a === "--node-modules") args.nodeModules = path.resolve(next());
    else {
      console.error(`unknown argument ${a}`);
      process.exit(1);
    }
  }
  return args;
}

function fail(message) {
  console.log(`FAIL: ${message}`);
  process.exit(1);
}

async function main() {
  const args = parseArgs(process.argv);
  let grpc, protoLoader;
  try {
    grpc = require(path.join(args.nodeModules, "@grpc/grpc-js"));
    protoLoader = require(path.join(args.nodeModules, "@grpc/proto-loader"));
  } catch (e) {
    console.log(`SKIP: @grpc/grpc-js or @grpc/proto-loader missing: ${e}`);
    process.exit(3);
  }
  const definition = protoLoader.loadSync(
      path.join(args.protoRoot, "hearth/v1/generation.proto"),
      {includeDirs: [args.protoRoot], keepCase: true, longs: Number,
       enums: String, defaults: true});
  const hearth = grpc.loadPackageDefinition(definition).hearth.v1;
  const client = new hearth.Generation(
      args.addr, grpc.credentials.createInsecure());
  const metadata = () => {
    const m = new grpc.Metadata();
    if (args.key) m.set("authorization", `Bearer ${args.key}`);
    return m;
  };
  const deadline = () => new Date(Date.now() + 60000);
  const request = {
    model: args.model,
    prompt: args.prompt,
    sampling: {max_new_tokens: args.maxNewTokens, temperature: 0},
  };

  const unary = await new Promise((resolve, reject) => {
    client.Generate(request, metadata(), {deadline: deadline()},
                    (err, response) => (err ? reject(err) : resolve(response)));
  }).catch((err) => fail(`Generate: ${err.code} ${err.details}`));
  console.log(`Generate: ${JSON.stringify(unary.text)} finish=${
      unary.finish_reason} completion_tokens=${
      unary.usage && unary.usage.completion_tokens}`);
  if (!unary.text) fail("Generate returned no text");
  if (!unary.usage || unary.usage.completion_tokens !== args.maxNewTokens) {
    fail(`Generate: completion_tokens ${JSON.stringify(unary.usage)}`);
  }

  // A bad request: INVALID_ARGUMENT naming the field.
  await new Promise((resolve) => {
    client.Generate({model: args.model, prompt: ""}, metadata(),
                    {deadline: deadline()}, (err) => {
      if (!err) fail("an empty prompt was accepted");
      if (err.code !== grpc.status.INVALID_ARGUMENT ||
          !err.details.startsWith("prompt")) {
        fail(`empty prompt: ${err.code} ${err.details}`);
      }
      console.log(`bad request: ${err.code} ${err.details}`);
      resolve();
    });
  });

  const chunks = [];
  let finish = null;
  await new Promise((resolve, reject) => {
    const call = client.GenerateStream(request, metadata(),
                                       {deadline: deadline()});
    call.on("data", (chunk) => {
      chunks.push(chunk.text);
      if (chunk.finish_reason && chunk.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
        finish = chunk.finish_reason;
      }
    });
    call.on("error", reject);
    call.on("end", resolve);
  }).catch((err) => fail(`GenerateStream: ${err.code} ${err.details}`));
  const streamed = chunks.join("");
  console.log(`GenerateStream: ${chunks.length} messages, ${
      JSON.stringify(streamed)} finish=${finish}`);
  // Tokens produced while a write is in flight are coalesced, so on a fast
  // loopback one message may carry them all; what must hold is the content.
  if (chunks.length < 1) fail("GenerateStream sent nothing");
  if (streamed !== unary.text) fail("stream text differs from Generate's");
  if (finish !== unary.finish_reason) fail("finish reasons differ");
  client.close();
  console.log("OK");
}

main();
