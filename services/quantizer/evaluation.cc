#include "services/quantizer/evaluation.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/model/kv_cache.h"

namespace hearth::quantizer {
namespace {

int64_t ProcStatusKb(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream ss(line.substr(key.size() + 1));
      int64_t kb = 0;
      ss >> kb;
      return kb;
    }
  }
  return 0;
}

}  // namespace

double Perplexity(model::LlamaForCausalLM& model,
                  const std::vector<int64_t>& tokens, int64_t seq_len,
                  int64_t max_windows) {
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) return std::nan("");
  seq_len = std::min(seq_len, n);
  double nll = 0;
  int64_t count = 0;
  for (int64_t w = 0; w < max_windows; ++w) {
    const int64_t start = w * seq_len;
    if (start + seq_len > n) break;
    at::Tensor ids =
        torch::from_blob(const_cast<int64_t*>(tokens.data()) + start,
                         {1, seq_len}, torch::kLong)
            .clone();
    at::Tensor logits = model.Forward(ids).logits;
    at::Tensor logp = at::log_softmax(logits[0].narrow(0, 0, seq_len - 1), -1);
    at::Tensor target = ids[0].narrow(0, 1, seq_len - 1);
    nll -= logp.gather(1, target.unsqueeze(1)).sum().item<double>();
    count += seq_len - 1;
  }
  return count == 0 ? std::nan("") : std::exp(nll / count);
}

double DecodeTokensPerSecond(model::LlamaForCausalLM& model, int64_t batch,
                             int64_t steps) {
  const int64_t prompt = 8;
  model::KvCacheOptions options;
  options.capacity_tokens = batch * (prompt + steps + 16);
  auto cache = model::KvCache::Create(model.CacheDims(), options);
  if (!cache.ok()) return 0;
  const int64_t vocab = model.config().vocab_size;
  std::vector<model::SequenceInput> batch_in(batch);
  for (int64_t b = 0; b < batch; ++b) {
    if (!(*cache)->AddSequence(b).ok()) return 0;
    batch_in[b].id = b;
    for (int64_t t = 0; t < prompt; ++t) {
      batch_in[b].tokens.push_back((b * prompt + t) % vocab);
    }
  }
  auto step = [&]() -> bool {
    auto logits = model.Step(**cache, batch_in);
    if (!logits.ok()) return false;
    at::Tensor next = logits->argmax(-1).contiguous();
    for (int64_t b = 0; b < batch; ++b) {
      batch_in[b].tokens.assign(1, next[b].item<int64_t>());
    }
    return true;
  };
  if (!step()) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    if (!step()) return 0;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return secs > 0 ? static_cast<double>(batch * steps) / secs : 0;
}

int64_t DiskBytes(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return fs::file_size(path, ec);
  int64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(path, ec)) {
    if (e.is_regular_file(ec)) total += e.file_size(ec);
  }
  return total;
}

int64_t ResidentBytes() { return ProcStatusKb("VmRSS") * 1024; }
int64_t PeakResidentBytes() { return ProcStatusKb("VmHWM") * 1024; }

void ResetPeakResidentBytes() {
  // proc(5), clear_refs: "5" resets the peak RSS (VmHWM) to the current RSS.
  std::ofstream("/proc/self/clear_refs") << "5";
}

}  // namespace hearth::quantizer
