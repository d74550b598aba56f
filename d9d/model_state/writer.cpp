#include <d9d/model_state/writer.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include <d9d/dist/dtensor.hpp>
#include <d9d/error.hpp>
#include <d9d/mapper/compose.hpp>
#include <d9d/mapper/leaf.hpp>
#include <d9d/model_state/progress.hpp>

namespace d9d::model_state {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kShardPrefix = ".d9d-shard-";  // .d9d-shard-<pid>-<tag>-<k>.safetensors

using detail::temp_shard_name;

// The reference's rule: the open shard (of `count` tensors, `bytes` bytes) is closed when the next
// tensor would take it past shard_size; an empty shard takes any tensor.
bool closes_shard(size_t count, int64_t bytes, int64_t next, int64_t shard_size) {
  return count > 0 && bytes + next > shard_size;
}

std::string group_list(const std::vector<const StateGroup*>& groups, size_t limit = 20) {
  std::ostringstream out;
  for (size_t i = 0; i < groups.size() && i < limit; ++i) {
    out << (i ? "; " : "") << mapper::to_string(*groups[i]);
  }
  if (groups.size() > limit) out << "; ... (" << groups.size() - limit << " more)";
  return out.str();
}

}  // namespace

CheckpointExistsError::CheckpointExistsError(fs::path dir, std::string file)
    : io::IoError(d9d::detail::str_cat("write_model_state: ", dir.string(),
                                       " already holds a checkpoint (", file,
                                       "); write elsewhere, or allow replacing it "
                                       "(WriteOptions::overwrite)")),
      dir_(std::move(dir)),
      file_(std::move(file)) {}

void check_shard_count(size_t count, int64_t shard_size) {
  D9D_CHECK(
      count <= static_cast<size_t>(io::kMaxShardCount), "write_model_state: the outputs need ",
      count, " shards of at most ", shard_size, " bytes, more than the ", io::kMaxShardCount,
      " that shard names (model-XXXXX-of-YYYYY.safetensors) can number; raise the shard size");
}

void check_fits_shard(const std::string& name, int64_t bytes, const WriteOptions& options) {
  D9D_CHECK(bytes <= options.shard_size || options.oversized_tensor_alone,
            "write_model_state: ", name, " has ", bytes, " bytes, more than the shard size of ",
            options.shard_size,
            " bytes (WriteOptions::oversized_tensor_alone gives such a tensor a shard of its own)");
}

void check_shard_header(size_t index, size_t count, std::span<const io::TensorDecl> decls,
                        const WriteOptions& options) {
  try {
    io::plan_safetensors(decls, options.metadata, {options.alignment, options.fsync});
  } catch (const Error& e) {
    d9d::detail::throw_error<ValueError>("write_model_state: shard ", index + 1, " of ", count,
                                         ": ", e.what());
  }
}

std::string detail::temp_shard_name(const std::string& tag, size_t index) {
  return std::string(kShardPrefix) + std::to_string(::getpid()) + "-" + tag + "-" +
         std::to_string(index + 1) + ".safetensors";
}

// ---- ShardWriter --------------------------------------------------------------------------------

struct ShardWriter::Impl {
  fs::path dest;
  MapperPtr mapper;
  WriteOptions options;
  std::string tag;

  // Topology: each input belongs to exactly one group.
  std::vector<const StateGroup*> groups;
  std::unordered_map<std::string, size_t> group_of_input;
  std::vector<size_t> remaining;          // inputs not yet arrived, per group
  std::map<std::string, Tensor> waiting;  // arrived inputs of incomplete groups
  std::vector<std::string> unconsumed;
  std::set<std::string> seen;

  struct Shard {
    std::string file;  // temporary name in dest
    std::vector<io::TensorDecl> decls;
    int64_t bytes = 0;
    std::optional<io::SafetensorsWriter> writer;
    size_t written = 0;
  };
  std::vector<Shard> shards;
  bool planned = false;
  std::unordered_map<std::string, size_t> shard_of;     // planned: output -> shard
  std::vector<std::pair<std::string, Tensor>> pending;  // unplanned: the open shard's tensors
  int64_t pending_bytes = 0;

  LocalShards result;
  int64_t output_count = 0;
  std::optional<ProgressBar> progress;
  bool finished = false;

  io::SaveOptions save_options() const {
    io::SaveOptions o;
    o.alignment = options.alignment;
    o.fsync = options.fsync;
    o.sha256 = options.write_hashes;
    return o;
  }

  // Applies the group of `input` if `input` was its last missing one; returns its outputs.
  std::optional<StateDict> arrive(const std::string& name, const Tensor& tensor) {
    D9D_CHECK(seen.insert(name).second, "write_model_state: the source yields ", name, " twice");
    auto it = group_of_input.find(name);
    if (it == group_of_input.end()) {
      unconsumed.push_back(name);
      return std::nullopt;
    }
    waiting.emplace(name, tensor);
    if (--remaining[it->second] > 0) return std::nullopt;
    const StateGroup& group = *groups[it->second];
    StateDict inputs;
    for (const std::string& in : group.inputs) {
      auto node = waiting.extract(in);
      inputs.insert(std::move(node));
    }
    return mapper->apply(std::move(inputs));
  }

  void write_planned(const std::string& name, const Tensor& tensor) {
    auto it = shard_of.find(name);
    D9D_CHECK(it != shard_of.end(), "write_model_state: the mapper produced ", name,
              ", which the plan made from the source's specs does not have");
    Shard& shard = shards[it->second];
    if (!shard.writer) {
      shard.writer.emplace(dest / shard.file, shard.decls, options.metadata, save_options());
    }
    shard.writer->write(name, tensor);  // checks the declared dtype and shape
    if (++shard.written == shard.decls.size()) {
      shard.writer->commit();
      if (const auto digest = shard.writer->sha256()) result.sha256[shard.file] = *digest;
      shard.writer.reset();
    }
  }

  void flush_pending() {
    if (pending.empty()) return;
    check_shard_count(shards.size() + 1, options.shard_size);
    Shard shard;
    shard.file = temp_shard_name(tag, shards.size());
    for (const auto& [name, tensor] : pending) {
      shard.decls.push_back({name, tensor.dtype(), tensor.shape()});
      result.weight_map.emplace_back(name, shard.file);
    }
    io::SafetensorsWriter writer(dest / shard.file, shard.decls, options.metadata, save_options());
    for (const auto& [name, tensor] : pending) writer.write(name, tensor);
    writer.commit();
    if (const auto digest = writer.sha256()) result.sha256[shard.file] = *digest;
    shard.written = shard.decls.size();
    shards.push_back(std::move(shard));
    pending.clear();
    pending_bytes = 0;
  }

  void write_unplanned(const std::string& name, const Tensor& tensor) {
    const int64_t bytes = tensor.nbytes();
    check_fits_shard(name, bytes, options);
    if (closes_shard(pending.size(), pending_bytes, bytes, options.shard_size)) flush_pending();
    pending.emplace_back(name, tensor);
    pending_bytes += bytes;
    result.total_size += bytes;
  }
};

ShardWriter::ShardWriter(fs::path dest_dir, MapperPtr mapper, WriteOptions options,
                         std::string temp_tag)
    : impl_(std::make_unique<Impl>()) {
  D9D_CHECK(mapper != nullptr, "write_model_state: the mapper is null");
  D9D_CHECK(options.shard_size > 0, "write_model_state: shard_size must be positive, got ",
            options.shard_size);
  Impl& w = *impl_;
  w.dest = std::move(dest_dir);
  w.mapper = std::move(mapper);
  w.options = std::move(options);
  w.tag = std::move(temp_tag);
  for (const StateGroup& g : w.mapper->state_dependency_groups()) {
    const size_t index = w.groups.size();
    w.groups.push_back(&g);
    w.remaining.push_back(g.inputs.size());
    w.output_count += static_cast<int64_t>(g.outputs.size());
    for (const std::string& in : g.inputs) w.group_of_input.emplace(in, index);
  }
}

ShardWriter::~ShardWriter() {
  if (impl_ == nullptr || impl_->finished) return;
  for (Impl::Shard& shard : impl_->shards) {
    if (shard.writer) {
      shard.writer->abandon();
    } else {
      std::error_code ignored;
      fs::remove(impl_->dest / shard.file, ignored);
    }
  }
}

int64_t ShardWriter::planned_output_count() const {
  return impl_->output_count;
}

std::vector<size_t> assign_shards(std::span<const std::pair<std::string, TensorSpec>> outputs,
                                  int64_t shard_size) {
  std::vector<size_t> shard_of;
  shard_of.reserve(outputs.size());
  size_t shards = 0, open_count = 0;
  int64_t open_bytes = 0;
  for (const auto& [name, spec] : outputs) {
    const int64_t bytes = spec.nbytes();
    if (shards == 0 || closes_shard(open_count, open_bytes, bytes, shard_size)) {
      ++shards;
      open_count = 0;
      open_bytes = 0;
    }
    ++open_count;
    open_bytes += bytes;
    shard_of.push_back(shards - 1);
  }
  return shard_of;
}

void ShardWriter::plan(std::span<const std::pair<std::string, TensorSpec>> source) {
  Impl& w = *impl_;
  D9D_CHECK(!w.planned && w.seen.empty(), "write_model_state: plan() must come first, and once");
  // The outputs in the order their groups will complete as the source arrives.
  std::vector<size_t> remaining = w.remaining;
  std::vector<SpecDict> inputs(w.groups.size());
  std::set<std::string> names;
  std::vector<std::pair<std::string, TensorSpec>> outputs;
  for (const auto& [name, spec] : source) {
    D9D_CHECK(names.insert(name).second, "write_model_state: the source yields ", name, " twice");
    auto it = w.group_of_input.find(name);
    if (it == w.group_of_input.end()) continue;
    const size_t g = it->second;
    inputs[g][name] = spec;
    if (--remaining[g] > 0) continue;
    SpecDict group_outputs;
    try {
      group_outputs = w.mapper->infer(inputs[g]);
    } catch (const Error& e) {
      d9d::detail::throw_error<ValueError>("write_model_state: group ",
                                           mapper::to_string(*w.groups[g]),
                                           " cannot take the source's tensors: ", e.what());
    }
    for (auto& [out, out_spec] : group_outputs) {
      check_fits_shard(out, out_spec.nbytes(), w.options);
      outputs.emplace_back(out, std::move(out_spec));
    }
  }
  std::vector<const StateGroup*> unsatisfied;
  for (size_t g = 0; g < w.groups.size(); ++g) {
    if (remaining[g] > 0) unsatisfied.push_back(w.groups[g]);
  }
  D9D_CHECK(unsatisfied.empty(), "write_model_state: the source does not provide every input of ",
            unsatisfied.size(), " group", unsatisfied.size() == 1 ? "" : "s", ": ",
            group_list(unsatisfied));
  // Lay the outputs out in shards.
  const std::vector<size_t> shard_of = assign_shards(outputs, w.options.shard_size);
  check_shard_count(shard_of.empty() ? 0 : shard_of.back() + 1, w.options.shard_size);
  int64_t total_bytes = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& [out, spec] = outputs[i];
    if (shard_of[i] == w.shards.size()) {
      w.shards.emplace_back();
      w.shards.back().file = temp_shard_name(w.tag, shard_of[i]);
    }
    Impl::Shard& shard = w.shards[shard_of[i]];
    shard.decls.push_back({out, spec.dtype, spec.shape});
    shard.bytes += spec.nbytes();
    total_bytes += spec.nbytes();
    w.shard_of.emplace(out, shard_of[i]);
    w.result.weight_map.emplace_back(out, shard.file);
  }
  for (size_t k = 0; k < w.shards.size(); ++k) {
    check_shard_header(k, w.shards.size(), w.shards[k].decls, w.options);
  }
  w.result.total_size = total_bytes;
  w.planned = true;
  w.progress.emplace(w.options.label, w.output_count, total_bytes, w.options.show_progress);
}

void ShardWriter::add(const std::string& name, const Tensor& tensor) {
  Impl& w = *impl_;
  D9D_CHECK(!w.finished, "write_model_state: add() after finish()");
  D9D_CHECK(tensor.defined(), "write_model_state: the source tensor ", name, " is undefined");
  if (!w.progress) w.progress.emplace(w.options.label, w.output_count, 0, w.options.show_progress);
  std::optional<StateDict> outputs = w.arrive(name, tensor);
  if (!outputs) return;
  for (const auto& [out, t] : *outputs) {
    // Note [DTensor in a StateDict]: a shard holds whole tensors.
    D9D_CHECK(!dist::is_dtensor(t), "write_model_state: ", out, " is a distributed tensor (",
              dist::as_dtensor(t)->str(),
              "); gather it first (gather_full_tensor, as save_model_state does)");
    if (w.planned) {
      w.write_planned(out, t);
    } else {
      w.write_unplanned(out, t);
    }
    w.progress->advance(1, t.nbytes());
  }
}

LocalShards ShardWriter::finish() {
  Impl& w = *impl_;
  D9D_CHECK(!w.finished, "write_model_state: finish() called twice");
  std::vector<const StateGroup*> unsatisfied;
  for (size_t g = 0; g < w.groups.size(); ++g) {
    if (w.remaining[g] > 0) unsatisfied.push_back(w.groups[g]);
  }
  D9D_CHECK(unsatisfied.empty(), "write_model_state: the source ended before every input of ",
            unsatisfied.size(), " group", unsatisfied.size() == 1 ? " arrived" : "s arrived", ": ",
            group_list(unsatisfied));
  if (w.planned) {
    for (const Impl::Shard& shard : w.shards) {
      D9D_CHECK(shard.written == shard.decls.size(), "write_model_state: shard ", shard.file,
                " got ", shard.written, " of its ", shard.decls.size(),
                " planned tensors: the source did not yield what its specs announced");
    }
  } else {
    w.flush_pending();
  }
  if (!w.unconsumed.empty()) {
    std::sort(w.unconsumed.begin(), w.unconsumed.end());
    std::ostringstream list;
    for (size_t i = 0; i < w.unconsumed.size() && i < 20; ++i) {
      list << (i ? ", " : "") << w.unconsumed[i];
    }
    if (w.unconsumed.size() > 20) list << ", ... (" << w.unconsumed.size() - 20 << " more)";
    std::fprintf(stderr,
                 "d9d: warning: write_model_state: %zu source tensor%s no mapper group consumed "
                 "%s ignored: %s\n",
                 w.unconsumed.size(), w.unconsumed.size() == 1 ? "" : "s",
                 w.unconsumed.size() == 1 ? "was" : "were", list.str().c_str());
  }
  w.progress.reset();
  for (const Impl::Shard& shard : w.shards) w.result.files.push_back(shard.file);
  w.finished = true;
  return w.result;
}

MapperPtr detail::gather_dtensor_inputs(const StateDict& state, MapperPtr mapper) {
  std::vector<MapperPtr> extract;
  bool any = false;
  for (const std::string& name : mapper::all_inputs(*mapper)) {
    auto it = state.find(name);
    const bool distributed = it != state.end() && dist::is_dtensor(it->second);
    any = any || distributed;
    extract.push_back(distributed ? mapper::gather_full_tensor(name) : mapper::identity(name));
  }
  if (!any) return mapper;
  return mapper::sequential({mapper::parallel(std::move(extract)), std::move(mapper)});
}

void save_model_state(const fs::path& dest_dir, MapperPtr mapper, const StateDict& state,
                      const WriteOptions& options) {
  write_model_state_local(dest_dir, detail::gather_dtensor_inputs(state, std::move(mapper)), state,
                          options);
}

}  // namespace d9d::model_state
