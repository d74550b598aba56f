// d9d inspect CKPT: what a checkpoint holds, from its headers alone.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

std::string pad(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

std::string pad_left(const std::string& s, size_t width) {
  return s.size() >= width ? s : std::string(width - s.size(), ' ') + s;
}

}  // namespace

int run_inspect(const InspectOptions& options) {
  const io::Checkpoint ck = io::Checkpoint::open(options.checkpoint);
  warn_unlisted(ck);
  const std::vector<std::string>& keys = ck.keys();
  // Quantized weights: each shown as one logical weight, its scales folded into it.
  const std::optional<mapper::QuantizationConfig> config = quantization_config(ck.dir());
  const std::vector<mapper::QuantizedPair> pairs =
      mapper::find_quantized_pairs(checkpoint_specs(ck), config);
  const std::map<std::string, size_t> folded = quantized_keys(pairs);
  auto pair_bytes = [&](const mapper::QuantizedPair& p) {
    int64_t bytes = ck.info(p.weight).nbytes() + ck.info(p.scale).nbytes();
    if (!p.global_scale.empty()) bytes += ck.info(p.global_scale).nbytes();
    return bytes;
  };

  std::map<std::string, std::pair<int64_t, int64_t>> per_file;   // tensors, bytes
  std::map<std::string, std::pair<int64_t, int64_t>> per_dtype;  // tensors, bytes
  for (const std::string& f : ck.files()) per_file[f] = {0, 0};
  for (const std::string& key : keys) {
    const io::CheckpointEntry e = ck.entry(key);
    auto& file = per_file[*e.file];
    ++file.first;
    file.second += e.info->nbytes();
    auto& dtype = per_dtype[std::string(dtype_name(e.info->dtype))];
    ++dtype.first;
    dtype.second += e.info->nbytes();
  }

  if (options.json) {
    nlohmann::ordered_json j;
    j["checkpoint"] = ck.dir().string();
    j["total_tensors"] = keys.size();
    j["total_size"] = ck.total_bytes();
    if (ck.index() && ck.index()->total_size) j["index_total_size"] = *ck.index()->total_size;
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    for (const auto& [name, stats] : per_file) {
      files.push_back({{"name", name}, {"tensors", stats.first}, {"bytes", stats.second}});
    }
    j["files"] = std::move(files);
    nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
    for (const std::string& key : keys) {
      const io::CheckpointEntry e = ck.entry(key);
      tensors.push_back({{"name", key},
                         {"dtype", dtype_name(e.info->dtype)},
                         {"shape", e.info->shape.vec()},
                         {"bytes", e.info->nbytes()},
                         {"file", *e.file}});
    }
    j["tensors"] = std::move(tensors);
    j["unlisted_tensors"] = ck.unlisted_tensors();  // Note [unlisted tensors]
    if (config) {
      j["quantization_config"] = {{"quant_method", config->quant_method}};
      if (config->block) j["quantization_config"]["block"] = *config->block;
    }
    nlohmann::ordered_json quantized = nlohmann::ordered_json::array();
    for (const mapper::QuantizedPair& p : pairs) {
      nlohmann::ordered_json q = {
          {"weight", p.weight}, {"format", quant_format_name(p.format)}, {"scale", p.scale}};
      if (!p.global_scale.empty()) {
        q["global_scale"] = p.global_scale;
        q["global_scale_mode"] = global_scale_mode_name(*p.global_scale_mode);
      }
      if (p.format == QuantFormat::kFp8Block) q["block"] = {p.block_rows, p.block_cols};
      if (p.misfit.empty()) {
        q["logical_shape"] = p.logical_shape.vec();
      } else {
        q["misfit"] = p.misfit;
      }
      q["bytes"] = pair_bytes(p);
      quantized.push_back(std::move(q));
    }
    j["quantized"] = std::move(quantized);
    std::cout << j.dump(1) << "\n";
    return 0;
  }

  // The table: name, dtype, shape, bytes, file; a quantized weight is one row (its format, its
  // logical shape, the bytes of it and its scales), its scales folded into it.
  struct Row {
    const std::string* name;
    std::string dtype, shape, bytes;
    const std::string* file;
  };
  std::vector<Row> rows;
  rows.reserve(keys.size());
  size_t w_name = 4;
  size_t w_dtype = 5;
  size_t w_shape = 5;
  size_t w_bytes = 5;
  for (const std::string& key : keys) {
    const io::CheckpointEntry e = ck.entry(key);
    Row row{&key, std::string(dtype_name(e.info->dtype)), format_shape(e.info->shape),
            std::to_string(e.info->nbytes()), e.file};
    if (auto it = folded.find(key); it != folded.end()) {
      const mapper::QuantizedPair& p = pairs[it->second];
      if (p.weight != key) continue;
      row.dtype = std::string(quant_format_name(p.format));
      row.shape = format_shape(p.logical_shape);
      row.bytes = std::to_string(pair_bytes(p));
    }
    w_name = std::max(w_name, key.size());
    w_dtype = std::max(w_dtype, row.dtype.size());
    w_shape = std::max(w_shape, row.shape.size());
    w_bytes = std::max(w_bytes, row.bytes.size());
    rows.push_back(std::move(row));
  }
  std::cout << pad("name", w_name) << "  " << pad("dtype", w_dtype) << "  " << pad("shape", w_shape)
            << "  " << pad_left("bytes", w_bytes) << "  file\n";
  for (const Row& r : rows) {
    std::cout << pad(*r.name, w_name) << "  " << pad(r.dtype, w_dtype) << "  "
              << pad(r.shape, w_shape) << "  " << pad_left(r.bytes, w_bytes) << "  " << *r.file
              << "\n";
  }
  std::cout << "\n"
            << keys.size() << " tensors, " << ck.total_bytes() << " bytes ("
            << format_bytes(ck.total_bytes()) << ") in " << ck.files().size()
            << (ck.files().size() == 1 ? " file" : " files") << " in " << ck.dir().string() << "\n";
  for (const auto& [name, stats] : per_file) {
    std::cout << "  " << name << ": " << count_of(stats.first, "tensor") << ", "
              << format_bytes(stats.second) << "\n";
  }
  std::cout << "  dtypes:";
  for (const auto& [name, stats] : per_dtype) {
    std::cout << " " << name << " " << stats.first << " (" << format_bytes(stats.second) << ")";
  }
  std::cout << "\n";
  if (!pairs.empty()) {
    std::map<std::string, int64_t> per_format;
    for (const mapper::QuantizedPair& p : pairs) {
      if (p.misfit.empty()) ++per_format[quantized_format_str(p)];
    }
    std::cout << "  quantized weights (one row each: format, logical shape, bytes with scales):";
    for (const auto& [format, count] : per_format) std::cout << " " << format << " " << count;
    std::cout << "\n";
    for (const mapper::QuantizedPair& p : pairs) {
      if (!p.misfit.empty()) {
        std::cout << "  not quantized as named: " << p.weight << " and " << p.scale << ": "
                  << p.misfit << "\n";
      }
    }
  }
  if (config) {
    std::cout << "  config.json quantization_config: quant_method "
              << (config->quant_method.empty() ? "(none)" : config->quant_method);
    if (config->block)
      std::cout << ", block [" << (*config->block)[0] << ", " << (*config->block)[1] << "]";
    std::cout << "\n";
  }
  if (ck.index() && ck.index()->total_size && *ck.index()->total_size != ck.total_bytes()) {
    std::cout << "  note: the index says total_size " << *ck.index()->total_size
              << "; the shards hold " << ck.total_bytes() << " bytes of tensors\n";
  }
  return 0;
}

Command add_inspect(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* command = app.add_subcommand(
      "inspect", "List a checkpoint's tensors (name, dtype, shape, bytes, file)");
  command
      ->add_option("checkpoint", options->checkpoint,
                   "Checkpoint directory, index file or .safetensors file")
      ->required();
  command->add_flag("--json", options->json, "Print JSON instead of a table");
  return {command, [options] { return run_inspect(*options); }};
}

}  // namespace d9d::cli
