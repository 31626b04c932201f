#include "services/quantizer/quantize_job.h"

#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/formats/gguf_llama.h"
#include "common/formats/safetensors.h"
#include "common/model/model_loader.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"
#include "services/quantizer/calibration.h"
#include "services/quantizer/evaluation.h"
#include "services/quantizer/quantize_model.h"

namespace hearth::quantizer {

using quant::QuantScheme;
using quant::ValidateScheme;
namespace {

namespace fs = std::filesystem;

std::string StripPrefix(std::string s, const std::string& prefix) {
  if (absl::StartsWith(s, prefix)) s = s.substr(prefix.size());
  for (char& c : s) c = static_cast<char>(std::tolower(c));
  return s;
}

absl::StatusOr<formats::GgmlType> GgufType(const std::string& f) {
  if (f == "gguf_f16") return formats::GgmlType::kF16;
  if (f == "gguf_q8_0") return formats::GgmlType::kQ8_0;
  if (f == "gguf_q4_0") return formats::GgmlType::kQ4_0;
  return absl::InvalidArgumentError(
      absl::StrCat("formats: ", f, " is not supported yet"));
}

std::string GgufSuffix(const std::string& f) {
  if (f == "gguf_f16") return "F16";
  if (f == "gguf_q8_0") return "Q8_0";
  return "Q4_0";
}

}  // namespace

absl::StatusOr<JobSpec> ParseJobSpec(const std::string& spec_json,
                                     const std::string& model_repo) {
  nlohmann::json j = nlohmann::json::parse(spec_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("spec: not a JSON object");
  }
  JobSpec s;
  try {
    s.source_model = j.value("source_model", "");
    s.output_name = j.value("output_name", "");
    s.method = StripPrefix(j.value("method", ""), "QUANTIZATION_METHOD_");
    const int bits = j.value("bits", 0);
    s.options.scheme.bits = bits == 0 ? 4 : bits;
    s.options.scheme.group_size = j.value("group_size", 0);
    s.options.scheme.symmetric = j.value("symmetric", false);
    s.options.smoothquant_alpha = j.value("smoothquant_alpha", 0.0);
    const nlohmann::json cal = j.value("calibration", nlohmann::json::object());
    s.text_file = cal.value("text_file", "");
    s.corpus = cal.value("corpus", "");
    s.num_samples = cal.value("num_samples", 0);
    s.sequence_length = cal.value("sequence_length", 0);
    if (s.num_samples == 0) s.num_samples = 128;
    if (s.sequence_length == 0) s.sequence_length = 512;
    const nlohmann::json g = j.value("gptq", nlohmann::json::object());
    s.options.gptq.damp_percent = g.value("damp_percent", 0.0);
    if (s.options.gptq.damp_percent == 0) s.options.gptq.damp_percent = 0.01;
    s.options.gptq.act_order = g.value("act_order", false);
    s.options.gptq.static_groups = g.value("static_groups", false);
    s.options.gptq.block_size = g.value("block_size", 0);
    if (s.options.gptq.block_size == 0) s.options.gptq.block_size = 128;
    const nlohmann::json a = j.value("awq", nlohmann::json::object());
    s.options.awq_grid = a.value("grid_size", 0);
    if (s.options.awq_grid == 0) s.options.awq_grid = 20;
    s.options.awq_clip = a.value("clip_search", false);
    for (const auto& f : j.value("formats", nlohmann::json::array())) {
      s.formats.push_back(StripPrefix(f.get<std::string>(), "OUTPUT_FORMAT_"));
    }
    s.evaluate = j.value("evaluate", false);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: a field has the wrong type: ", e.what()));
  }
  if (s.source_model.empty() ||
      s.source_model.find("..") != std::string::npos ||
      s.source_model.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        "source_model: must name a model folder in the repository");
  }
  if (!s.output_name.empty() &&
      (s.output_name.find('/') != std::string::npos ||
       s.output_name.find("..") != std::string::npos)) {
    return absl::InvalidArgumentError("output_name: must be a plain name");
  }
  const std::string src = model_repo + "/" + s.source_model;
  if (!fs::exists(src)) {
    return absl::NotFoundError(
        absl::StrCat("source_model: no model \"", s.source_model, "\""));
  }
  if (absl::EndsWith(s.source_model, ".gguf")) {
    // A broken file is the caller's input error, with its byte offset; a
    // sound one is a source the quantizer cannot take yet.
    auto gguf = formats::GgufFile::Open(src);
    if (!gguf.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("source_model: ", gguf.status().message()));
    }
    return absl::UnimplementedError(
        "source_model: quantizing from a GGUF is not supported; give the "
        "Hugging Face model folder");
  }
  auto config = formats::LoadLlamaConfig(src + "/config.json");
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("source_model: ", config.status().message()));
  }
  // Map the checkpoint now: a truncated file or a header whose offsets lie
  // is the caller's input error, caught before the job is queued.
  if (auto reader = formats::CheckpointReader::Open(src); !reader.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("source_model: ", reader.status().message()));
  }
  if (!config->quantization_config.is_null()) {
    return absl::InvalidArgumentError(
        "source_model: is already quantized; quantize a float model");
  }
  static const std::map<std::string, Method> kMethods = {
      {"rtn", Method::kRtn},
      {"dynamic_int8", Method::kDynamicInt8},
      {"static_int8", Method::kStaticInt8},
      {"gptq", Method::kGptq},
      {"awq", Method::kAwq}};
  if (s.method == "gguf") {
    if (s.formats.empty()) s.formats = {"gguf_q8_0"};
    for (const std::string& f : s.formats) {
      if (!absl::StartsWith(f, "gguf_")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "formats: method GGUF writes only GGUF formats, got ", f));
      }
    }
  } else if (auto it = kMethods.find(s.method); it != kMethods.end()) {
    s.options.method = it->second;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "method: \"", s.method, "\" is not a quantization method"));
  }
  for (const std::string& f : s.formats) {
    if (absl::StartsWith(f, "gguf_")) {
      HEARTH_RETURN_IF_ERROR(GgufType(f).status());
    } else if (f != "hearth_safetensors" && f != "gptq_safetensors" &&
               f != "awq_safetensors") {
      return absl::InvalidArgumentError(absl::StrCat("formats: unknown ", f));
    }
  }
  if (s.method != "gguf") {
    QuantScheme scheme = s.options.scheme;
    if (s.options.method == Method::kDynamicInt8 ||
        s.options.method == Method::kStaticInt8) {
      scheme.bits = 8;
    }
    for (int64_t in : {config->hidden_size, config->intermediate_size,
                       config->num_attention_heads * config->head_dim}) {
      HEARTH_RETURN_IF_ERROR(ValidateScheme(scheme, in));
    }
    if (s.options.method == Method::kAwq &&
        (scheme.bits != 4 || scheme.group_size == 0)) {
      return absl::InvalidArgumentError(
          "group_size: AWQ needs bits 4 and a group size (32, 64 or 128)");
    }
    if (s.options.smoothquant_alpha < 0 || s.options.smoothquant_alpha > 1) {
      return absl::InvalidArgumentError("smoothquant_alpha: must be in [0, 1]");
    }
    if (s.num_samples > 4096 || s.sequence_length > 8192) {
      return absl::InvalidArgumentError(
          "calibration: num_samples <= 4096 and sequence_length <= 8192");
    }
    const bool calib = s.options.method == Method::kStaticInt8 ||
                       s.options.method == Method::kGptq ||
                       s.options.method == Method::kAwq;
    if (calib || s.evaluate) {
      auto text = LoadCalibrationText(s.text_file, s.corpus);
      if (!text.ok()) {
        return absl::InvalidArgumentError(text.status().message());
      }
    }
  }
  if (s.output_name.empty()) {
    std::string tag = s.method;
    if (s.method == "rtn" || s.method == "gptq" || s.method == "awq") {
      tag = absl::StrCat(s.method, s.options.scheme.bits);
      if (s.options.scheme.group_size) {
        absl::StrAppend(&tag, "g", s.options.scheme.group_size);
      }
    }
    s.output_name = absl::StrCat(s.source_model, "-", tag);
  }
  return s;
}

absl::Status RunQuantizeJob(const std::string& model_repo,
                            jobs::JobContext& ctx) {
  torch::NoGradGuard no_grad;
  HEARTH_ASSIGN_OR_RETURN(JobSpec spec,
                          ParseJobSpec(ctx.spec_json(), model_repo));
  const std::string src = model_repo + "/" + spec.source_model;
  ResetPeakResidentBytes();  // this job's peak, not the service's
  const auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, double> metrics;
  nlohmann::json report = {{"source_model", spec.source_model},
                           {"method", spec.method}};

  if (spec.method == "gguf") {
    for (size_t i = 0; i < spec.formats.size(); ++i) {
      const std::string& f = spec.formats[i];
      HEARTH_ASSIGN_OR_RETURN(formats::GgmlType type, GgufType(f));
      const std::string out = absl::StrCat(model_repo, "/", spec.output_name,
                                           ".", GgufSuffix(f), ".gguf");
      formats::GgufExportProgressFn fn = [&](int64_t done, int64_t total,
                                             std::string_view name) {
        ctx.ReportProgress(
            (i + static_cast<double>(done) / total) / spec.formats.size(),
            absl::StrCat("gguf ", GgufSuffix(f), ": ", std::string(name)));
      };
      HEARTH_RETURN_IF_ERROR(formats::ExportLlamaGguf(src, out, type, &fn));
      ctx.AddArtifact(
          spec.formats.size() == 1 ? "gguf" : "gguf_" + GgufSuffix(f), out);
      if (ctx.Cancelled()) return absl::CancelledError("cancelled");
    }
    ctx.ReportProgress(1.0, "done");
    return absl::OkStatus();
  }

  HEARTH_ASSIGN_OR_RETURN(formats::LlamaConfig config,
                          formats::LoadLlamaConfig(src + "/config.json"));
  ctx.ReportProgress(0.01, "loading model");
  HEARTH_ASSIGN_OR_RETURN(auto tensors, LoadFloatTensors(src));
  TokenSplit split;
  at::Tensor calibration;
  const bool needs_text = spec.options.method == Method::kStaticInt8 ||
                          spec.options.method == Method::kGptq ||
                          spec.options.method == Method::kAwq || spec.evaluate;
  if (needs_text) {
    HEARTH_ASSIGN_OR_RETURN(std::string text,
                            LoadCalibrationText(spec.text_file, spec.corpus));
    HEARTH_ASSIGN_OR_RETURN(auto tokens,
                            TokenizeText(src, text, config.vocab_size));
    split = SplitTokens(tokens);
    const int64_t seq =
        std::min<int64_t>(spec.sequence_length, config.max_position_embeddings);
    HEARTH_ASSIGN_OR_RETURN(
        calibration, SampleWindows(split.calibration, spec.num_samples, seq));
  }
  const int64_t rss_before = ResidentBytes();
  auto progress = [&](double f, const std::string& msg) {
    ctx.ReportProgress(0.02 + 0.78 * f, msg);
    return !ctx.Cancelled();
  };
  HEARTH_ASSIGN_OR_RETURN(QuantizedModel qm,
                          QuantizeModel(config, std::move(tensors), calibration,
                                        spec.options, progress));
  const double quant_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  if (ctx.Cancelled()) return absl::CancelledError("cancelled");
  ctx.ReportProgress(0.8, "writing outputs");

  std::vector<std::string> formats = spec.formats;
  if (formats.empty()) {
    switch (DefaultFolderFormat(spec.options)) {
      case FolderFormat::kGptq:
        formats = {"gptq_safetensors"};
        break;
      case FolderFormat::kAwq:
        formats = {"awq_safetensors"};
        break;
      case FolderFormat::kHearthInt8:
        formats = {"hearth_safetensors"};
        break;
    }
  }
  std::string model_folder;
  for (const std::string& f : formats) {
    if (absl::StartsWith(f, "gguf_")) {
      HEARTH_ASSIGN_OR_RETURN(formats::GgmlType type, GgufType(f));
      const std::string out = absl::StrCat(model_repo, "/", spec.output_name,
                                           ".", GgufSuffix(f), ".gguf");
      HEARTH_RETURN_IF_ERROR(formats::ExportLlamaGguf(src, out, type));
      ctx.AddArtifact("gguf", out);
      continue;
    }
    const FolderFormat ff = f == "gptq_safetensors" ? FolderFormat::kGptq
                            : f == "awq_safetensors"
                                ? FolderFormat::kAwq
                                : FolderFormat::kHearthInt8;
    std::string folder = model_repo + "/" + spec.output_name;
    if (!model_folder.empty()) folder += "-" + f.substr(0, f.find('_'));
    HEARTH_RETURN_IF_ERROR(WriteQuantizedFolder(qm, ff, src, folder));
    if (model_folder.empty()) model_folder = folder;
    ctx.AddArtifact(model_folder == folder ? "model" : f, folder);
  }
  metrics["quantization_seconds"] = quant_seconds;
  metrics["peak_memory_bytes"] = static_cast<double>(PeakResidentBytes());
  metrics["quantization_memory_bytes"] =
      static_cast<double>(PeakResidentBytes() - rss_before);
  report["quantization_seconds"] = quant_seconds;
  report["peak_memory_bytes"] = PeakResidentBytes();

  if (spec.evaluate && !model_folder.empty()) {
    ctx.ReportProgress(0.85, "evaluating fp32");
    int64_t rss0 = ResidentBytes();
    HEARTH_ASSIGN_OR_RETURN(auto float_tensors, LoadFloatTensors(src));
    HEARTH_ASSIGN_OR_RETURN(auto before,
                            model::ModelFromTensors(config, float_tensors));
    const int64_t seq =
        std::min<int64_t>(std::min<int64_t>(spec.sequence_length, 256),
                          config.max_position_embeddings);
    const int64_t windows = 16;
    struct Row {
      std::string name;
      double ppl, b1, b16;
      int64_t mem, disk;
      int64_t rss = 0;  // process RSS added by building/loading the model
    };
    std::vector<Row> rows;
    rows.push_back({"fp32", Perplexity(*before, split.held_out, seq, windows),
                    DecodeTokensPerSecond(*before, 1, 16),
                    DecodeTokensPerSecond(*before, 16, 16),
                    before->LayerLinearBytes(), DiskBytes(src),
                    ResidentBytes() - rss0});
    before.reset();
    float_tensors.clear();
    if (ctx.Cancelled()) return absl::CancelledError("cancelled");
    ctx.ReportProgress(0.92, "evaluating quantized");
    rss0 = ResidentBytes();
    HEARTH_ASSIGN_OR_RETURN(auto after, model::LoadModel(model_folder));
    const int64_t after_rss = ResidentBytes() - rss0;
    const model::LinearImpl* first = after->linear_impl(0, "self_attn.q_proj");
    rows.push_back({first != nullptr ? first->Describe() : "f32",
                    Perplexity(*after, split.held_out, seq, windows),
                    DecodeTokensPerSecond(*after, 1, 16),
                    DecodeTokensPerSecond(*after, 16, 16),
                    after->LayerLinearBytes(), DiskBytes(model_folder),
                    after_rss});
    metrics["perplexity_before"] = rows[0].ppl;
    metrics["perplexity_after"] = rows[1].ppl;
    metrics["size_on_disk_bytes"] = static_cast<double>(rows[1].disk);
    metrics["resident_weight_bytes"] = static_cast<double>(rows[1].mem);
    metrics["decode_tokens_per_second_b1"] = rows[1].b1;
    metrics["decode_tokens_per_second_b16"] = rows[1].b16;
    std::string table =
        "| model | ppl | layer weights MiB | disk MiB | tok/s b1 | tok/s b16 "
        "|\n"
        "|---|---|---|---|---|---|\n";
    nlohmann::json jr = nlohmann::json::array();
    for (const Row& r : rows) {
      absl::StrAppendFormat(
          &table, "| %s | %.4f | %.2f | %.2f | %.1f | %.1f |\n", r.name, r.ppl,
          r.mem / 1048576.0, r.disk / 1048576.0, r.b1, r.b16);
      jr.push_back({{"model", r.name},
                    {"perplexity", r.ppl},
                    {"layer_weight_bytes", r.mem},
                    {"size_on_disk_bytes", r.disk},
                    {"decode_tokens_per_second_b1", r.b1},
                    {"decode_tokens_per_second_b16", r.b16},
                    {"resident_model_bytes", r.rss}});
    }
    report["evaluation"] = jr;
    report["held_out_tokens"] = split.held_out.size();
    report["eval_sequence_length"] = seq;
    report["resident_memory_bytes"] = ResidentBytes();
    report["table"] = table;
    metrics["resident_model_bytes"] = static_cast<double>(rows[1].rss);
    metrics["resident_memory_bytes"] = static_cast<double>(ResidentBytes());
    // Every headline number at the top level too (perplexity_before/after,
    // size_on_disk_bytes, resident_*, decode_*, quantization_*).
    report["metrics"] = metrics;
    const std::string path = model_folder + "/quant_report.json";
    {
      std::ofstream out(path + ".tmp", std::ios::trunc);
      out << report.dump(2) << "\n";
    }
    fs::rename(path + ".tmp", path);
    ctx.AddArtifact("report", path);
    ctx.ReportProgress(1.0, table, metrics);
    return absl::OkStatus();
  }
  ctx.ReportProgress(1.0, "done", metrics);
  return absl::OkStatus();
}

}  // namespace hearth::quantizer
