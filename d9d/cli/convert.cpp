// d9d convert CKPT OUT --spec S: a checkpoint through a spec into a new sharded checkpoint.
#include <iostream>

#include <d9d/mapper/adapters.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

// Removes `dir` on failure if this run created it and left it empty (nothing partial).
class CreatedDirGuard {
 public:
  explicit CreatedDirGuard(fs::path dir) : dir_(std::move(dir)) {
    std::error_code ec;
    created_ = !fs::exists(dir_, ec);
  }
  CreatedDirGuard(const CreatedDirGuard&) = delete;
  CreatedDirGuard& operator=(const CreatedDirGuard&) = delete;
  ~CreatedDirGuard() {
    if (!created_ || done_) return;
    std::error_code ec;
    if (fs::is_directory(dir_, ec) && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
  }
  void done() { done_ = true; }

 private:
  fs::path dir_;
  bool created_ = false;
  bool done_ = false;
};

}  // namespace

ConvertResult run_convert(const ConvertOptions& options) {
  const Stopwatch clock;
  std::error_code ec;
  if (fs::exists(options.dest, ec) && fs::exists(options.source, ec)) {
    D9D_CHECK(!fs::equivalent(checkpoint_dir(options.source), options.dest, ec),
              "convert: the destination ", options.dest.string(),
              " is the source checkpoint's directory; write elsewhere");
  }

  // Plan from metadata before anything touches the destination.
  Conversion c;
  if (options.spec_text) {
    c = options.reverse ? reverse_conversion(options.source, options.spec_text, options.spec_origin)
                        : forward_conversion(io::Checkpoint::open(options.source),
                                             *options.spec_text, options.spec_origin);
  } else {
    c = make_conversion(options.source, options.spec, options.reverse);
  }
  if (!options.quiet && !c.reverse) {
    for (const std::string& rule : c.mapping.unused_rules) {
      std::cerr << "d9d: note: rule " << rule << " matched no tensor\n";
    }
    if (c.mapping.unmatched == mapper::UnmatchedPolicy::kDrop &&
        !c.mapping.unmatched_keys.empty()) {
      std::cerr << "d9d: note: " << c.mapping.unmatched_keys.size()
                << " tensors no rule matches are dropped (the spec says \"unmatched\": \"drop\")\n";
    }
  }

  if (options.threads > 0) set_num_threads(options.threads);
  model_state::ReadOptions ro;
  ro.device = options.device;
  ro.threads = options.threads;
  ro.memory_budget = options.memory_budget;
  ro.show_progress = options.progress;
  ro.label = c.reverse ? "Converting back" : "Converting";
  model_state::ModelStateStream stream =
      model_state::read_model_state(options.source, c.mapper, ro);

  ConvertResult result;
  const model_state::ReadPlan& plan = stream.plan();
  for (const model_state::GroupPlan& g : plan.groups) {
    result.input_count += static_cast<int64_t>(g.inputs.size());
  }
  result.input_bytes = plan.input_bytes;
  result.output_count = plan.output_count;
  result.output_bytes = plan.output_bytes;

  model_state::WriteOptions wo;
  wo.shard_size = options.shard_size;
  wo.show_progress = false;  // the read stream's bar shows the same work
  wo.overwrite = options.overwrite;
  wo.fsync = options.fsync;

  CreatedDirGuard guard(options.dest);
  // write_model_state_local, spelled out so that the record of an earlier conversion goes just
  // before the new checkpoint replaces the old one (Note [conversion sidecar]).
  model_state::prepare_destination(options.dest, wo);
  {
    model_state::ShardWriter writer(options.dest,
                                    mapper::identity_mapper_from_mapper_outputs(c.mapper), wo);
    if (const auto specs = stream.planned_specs()) writer.plan(*specs);
    for (auto&& [name, tensor] : stream) writer.add(name, tensor);
    const model_state::LocalShards shards = writer.finish();
    fs::remove(options.dest / kSidecarFileName, ec);
    model_state::finalize_checkpoint(options.dest, {&shards, 1}, wo);
  }
  if (!c.reverse) write_sidecar(options.dest, c.sidecar, options.fsync);
  guard.done();

  const io::SafetensorsIndex index = io::SafetensorsIndex::read(options.dest / io::kIndexFileName);
  result.shard_count = static_cast<int64_t>(index.files().size());
  result.seconds = clock.seconds();
  if (!options.quiet) {
    std::cout << "d9d convert: " << result.input_count << " tensors ("
              << format_bytes(result.input_bytes) << ") from " << options.source.string() << " -> "
              << result.output_count << " tensors (" << format_bytes(result.output_bytes) << ") in "
              << result.shard_count << " shard" << (result.shard_count == 1 ? "" : "s") << " in "
              << options.dest.string() << (c.reverse ? " (reversed)" : "") << ", "
              << format_seconds(result.seconds) << ", "
              << format_rate(result.output_bytes, result.seconds) << "\n";
  }
  return result;
}

}  // namespace d9d::cli
