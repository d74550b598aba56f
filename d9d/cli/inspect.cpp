// d9d inspect CKPT: what a checkpoint holds, from its headers alone.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

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
    std::cout << j.dump(1) << "\n";
    return 0;
  }

  // The table: name, dtype, shape, bytes, file.
  size_t w_name = 4;
  size_t w_dtype = 5;
  size_t w_shape = 5;
  size_t w_bytes = 5;
  std::vector<std::string> shapes;
  shapes.reserve(keys.size());
  for (const std::string& key : keys) {
    const io::TensorInfo& info = ck.info(key);
    shapes.push_back(format_shape(info.shape));
    w_name = std::max(w_name, key.size());
    w_dtype = std::max(w_dtype, dtype_name(info.dtype).size());
    w_shape = std::max(w_shape, shapes.back().size());
    w_bytes = std::max(w_bytes, std::to_string(info.nbytes()).size());
  }
  std::cout << pad("name", w_name) << "  " << pad("dtype", w_dtype) << "  " << pad("shape", w_shape)
            << "  " << pad_left("bytes", w_bytes) << "  file\n";
  for (size_t i = 0; i < keys.size(); ++i) {
    const io::CheckpointEntry e = ck.entry(keys[i]);
    std::cout << pad(keys[i], w_name) << "  "
              << pad(std::string(dtype_name(e.info->dtype)), w_dtype) << "  "
              << pad(shapes[i], w_shape) << "  "
              << pad_left(std::to_string(e.info->nbytes()), w_bytes) << "  " << *e.file << "\n";
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
