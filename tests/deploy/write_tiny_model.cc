// hearth-write-tiny-model DIR: writes the worker tests' tiny random Llama model
// (byte-level tokenizer.json, services/worker/test_models.h) as a model folder,
// so that scripts/up and the deployment can be exercised before the default
// model exists:
//
//   build/tests/deploy/hearth-write-tiny-model models/tiny
//   HEARTH_UP_MODEL=tiny scripts/up --once
//
// Its answers are random bytes: it checks the plumbing, not the model.
#include <iostream>

#include "services/worker/test_models.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: hearth-write-tiny-model DIR\n";
    return 2;
  }
  const absl::Status status = hearth::worker::testing::WriteTinyModel(argv[1]);
  if (!status.ok()) {
    std::cerr << "hearth-write-tiny-model: " << status.message() << "\n";
    return 1;
  }
  std::cout << "wrote a tiny random model to " << argv[1] << "\n";
  return 0;
}
