// d9d convert CKPT OUT --spec S: a checkpoint through a spec into a new sharded checkpoint.
// Under `mpirun -np N` the groups are split across the ranks and one checkpoint comes out, byte for
// byte the single-process one (Note [distributed conversion] in <d9d/model_state/distributed.hpp>).
#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>

#include <d9d/dist/process_group.hpp>
#include <d9d/mapper/adapters.hpp>
#include <d9d/model_state/conversion.hpp>
#include <d9d/model_state/distributed.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

// The mapper, planned from metadata before anything touches the destination.
Conversion plan_conversion(const ConvertOptions& options) {
  model_state::check_destination_is_not_source(options.source, options.dest);
  if (options.spec_text) {
    return options.reverse
               ? reverse_conversion(options.source, options.spec_text, options.spec_origin,
                                    options.params, options.allow_lossy)
               : forward_conversion(io::Checkpoint::open(options.source), *options.spec_text,
                                    options.spec_origin, options.params);
  }
  return make_conversion(options.source, options.spec, options.reverse, options.params,
                         options.allow_lossy);
}

// An existing checkpoint without --overwrite, said in the command line's words.
[[noreturn]] void refuse_existing(const model_state::CheckpointExistsError& e) {
  d9d::detail::throw_error<io::IoError>(e.dir().string(), " already holds a checkpoint (", e.file(),
                                        "); write elsewhere, or pass --overwrite to replace it");
}

void print_notes(const ConvertOptions& options, const Conversion& c) {
  if (!c.unlisted.empty()) std::cerr << "d9d: warning: " << c.unlisted << "\n";
  if (!c.lossy_note.empty()) std::cerr << "d9d: note: " << c.lossy_note << "\n";
  if (options.quiet || c.reverse) return;
  for (const std::string& note : c.mapping.notes) std::cerr << "d9d: note: " << note << "\n";
  for (const std::string& rule : c.mapping.unused_rules) {
    // An optional rule is expected to find nothing at times; plan lists it.
    if (rule.ends_with(" (optional)")) continue;
    std::cerr << "d9d: note: rule " << rule << " matched no tensor\n";
  }
  if (c.mapping.unmatched == mapper::UnmatchedPolicy::kDrop && !c.mapping.unmatched_keys.empty()) {
    std::cerr << "d9d: note: " << c.mapping.unmatched_keys.size()
              << " tensors no rule matches are dropped (the spec says \"unmatched\": \"drop\")\n";
  }
}

// What was done to config.json beside the new checkpoint (Note [config.json]), once it is there.
void note_config(const ConvertOptions& options, const Conversion& c) {
  if (!c.config_note.empty() && !options.quiet) std::cerr << "d9d: note: " << c.config_note << "\n";
}

// A group that needs more than --memory-budget (its inputs and outputs) is read alone, beyond the
// budget (Note [read-ahead budget]): said once, naming the largest, so the figure is no surprise.
void note_budget(const ConvertOptions& options, const model_state::ReadPlan& plan) {
  const model_state::GroupPlan* largest = nullptr;
  int64_t over = 0;
  for (const model_state::GroupPlan& g : plan.groups) {
    const int64_t cost = g.input_bytes + g.output_bytes;
    if (cost <= options.memory_budget) continue;
    ++over;
    if (largest == nullptr || cost > largest->input_bytes + largest->output_bytes) largest = &g;
  }
  if (largest == nullptr || options.quiet) return;
  std::cerr << "d9d: note: " << count_of(over, "group") << " needed more than --memory-budget "
            << format_size(options.memory_budget) << " and " << (over == 1 ? "was" : "were")
            << " read alone, beyond it; the largest, making "
            << (largest->group.outputs.empty() ? std::string("nothing")
                                               : *largest->group.outputs.begin())
            << (largest->group.outputs.size() > 1
                    ? " and " + std::to_string(largest->group.outputs.size() - 1) + " more"
                    : std::string())
            << ", needed " << format_bytes(largest->input_bytes + largest->output_bytes) << "\n";
}

// Tensors larger than --shard-size get a shard of their own (WriteOptions::oversized_tensor_alone,
// transformers' splitter's rule): said, naming them, as transformers warns.
void note_oversized(const ConvertOptions& options, const model_state::ReadPlan& plan) {
  if (options.quiet) return;
  std::vector<std::string> names;
  for (const model_state::GroupPlan& g : plan.groups) {
    for (const auto& [name, spec] : g.outputs) {
      if (spec.nbytes() > options.shard_size) names.push_back(name);
    }
  }
  if (names.empty()) return;
  std::sort(names.begin(), names.end());
  std::cerr << "d9d: note: " << count_of(static_cast<int64_t>(names.size()), "tensor")
            << " larger than --shard-size " << format_size(options.shard_size)
            << (names.size() == 1 ? " has" : " each have") << " a shard of its own: " << names[0];
  for (size_t i = 1; i < std::min<size_t>(names.size(), 4); ++i) std::cerr << ", " << names[i];
  if (names.size() > 4) std::cerr << " and " << names.size() - 4 << " more";
  std::cerr << "\n";
}

model_state::ReadOptions read_options(const ConvertOptions& options, const Conversion& c) {
  model_state::ReadOptions ro;
  ro.device = options.device;
  ro.memory_budget = options.memory_budget;
  ro.show_progress = options.show_progress;
  ro.label = c.reverse ? "Converting back" : "Converting";
  return ro;
}

// The library's write options from the command line's (the sidecar is added by
// conversion_write_options, Note [conversion sidecar]).
model_state::WriteOptions write_options(const ConvertOptions& options) {
  model_state::WriteOptions wo;
  wo.shard_size = options.shard_size;
  wo.oversized_tensor_alone = true;    // as transformers' save_pretrained; note_oversized says so
  wo.single_file_if_one_shard = true;  // model.safetensors, as save_pretrained
  wo.show_progress = false;            // the read stream's bar shows the same work
  wo.overwrite = options.overwrite;
  wo.fsync = options.fsync;
  wo.write_hashes = options.write_hashes;
  return wo;
}

ConvertResult summarize(const ConvertOptions& options, const Conversion& c,
                        const model_state::ReadPlan& plan, const Stopwatch& clock, int ranks) {
  ConvertResult result;
  for (const model_state::GroupPlan& g : plan.groups) {
    result.input_count += static_cast<int64_t>(g.inputs.size());
  }
  result.input_bytes = plan.input_bytes;
  result.output_count = plan.output_count;
  result.output_bytes = plan.output_bytes;
  // The checkpoint just written: an index and its shards, or one model.safetensors.
  const fs::path index = options.dest / io::kIndexFileName;
  result.shard_count = fs::exists(index)
                           ? static_cast<int64_t>(io::SafetensorsIndex::read(index).files().size())
                           : 1;
  result.seconds = clock.seconds();
  if (!options.quiet) {
    std::cout << "d9d convert: " << result.input_count << " tensors ("
              << format_bytes(result.input_bytes) << ") from " << options.source.string() << " -> "
              << result.output_count << " tensors (" << format_bytes(result.output_bytes) << ") in "
              << result.shard_count << " shard" << (result.shard_count == 1 ? "" : "s") << " in "
              << options.dest.string() << (c.reverse ? " (reversed)" : "")
              << (ranks > 1 ? " by " + std::to_string(ranks) + " ranks" : "") << ", "
              << format_seconds(result.seconds) << ", "
              << format_rate(result.output_bytes, result.seconds) << "\n";
  }
  return result;
}

// Every rank plans the same conversion; rank 0 alone speaks, keeps the destination directory
// tidy; the sidecar is published with the checkpoint.
ConvertResult run_convert_distributed(const ConvertOptions& options, dist::ProcessGroup& world) {
  const Stopwatch clock;
  const bool rank0 = world.rank() == 0;
  Conversion c;
  std::string error;
  try {
    c = plan_conversion(options);
    // Rank 0's Destination refuses it too, but in the library's words, agreed as text.
    if (rank0 && !options.overwrite) {
      try {
        model_state::refuse_existing_checkpoint(options.dest);
      } catch (const model_state::CheckpointExistsError& e) {
        refuse_existing(e);
      }
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  error = dist::agree_on_error(world, error);
  if (!error.empty()) throw dist::CollectiveError(error);
  if (rank0) print_notes(options, c);

  if (options.threads > 0) set_num_threads(options.threads);
  std::optional<model_state::CreatedDirGuard> guard;
  if (rank0) guard.emplace(options.dest);
  const model_state::ReadPlan plan = model_state::convert_model_state_distributed(
      options.source, options.dest, c.mapper, world, read_options(options, c),
      model_state::conversion_write_options(c, write_options(options)));
  if (guard) guard->done();
  if (rank0) note_config(options, c);
  if (rank0) note_budget(options, plan);
  if (rank0) note_oversized(options, plan);
  ConvertOptions quiet_unless_rank0 = options;
  quiet_unless_rank0.quiet = options.quiet || !rank0;
  return summarize(quiet_unless_rank0, c, plan, clock, world.size());
}

// Under mpirun with a tp spec, each rank converts its own share into OUT/rank-0000r/ (Note [a
// rank's share] in common.cpp); nullopt for the one-checkpoint distributed conversion.
std::optional<ConvertOptions> per_rank_options(const ConvertOptions& options, int rank, int size) {
  if (options.reverse || (!options.spec_text && !options.spec)) return std::nullopt;
  const std::string text =
      options.spec_text ? *options.spec_text : load_spec(*options.spec, options.source).text;
  std::optional<Params> params = per_rank_params(text, options.params, rank, size);
  if (!params) return std::nullopt;
  ConvertOptions mine = options;
  mine.params = std::move(*params);
  mine.dest = options.dest / rank_dir_name(rank);
  return mine;
}

}  // namespace

ConvertResult run_convert(const ConvertOptions& options) {
  if (dist::is_initialized() && dist::world()->size() > 1) {
    dist::ProcessGroup& world = *dist::world();
    std::optional<ConvertOptions> mine;
    std::string error;
    try {
      mine = per_rank_options(options, world.rank(), world.size());
    } catch (const std::exception& e) {
      error = e.what();
    }
    error = dist::agree_on_error(world, error);
    if (!error.empty()) throw dist::CollectiveError(error);
    if (!mine) return run_convert_distributed(options, world);
    ConvertResult result;
    try {
      fs::create_directories(options.dest);
      mine->quiet = options.quiet || world.rank() != 0;
      result = run_convert_local(*mine);  // this rank's share, alone
    } catch (const std::exception& e) {
      error = e.what();
    }
    error = dist::agree_on_error(world, error);
    if (!error.empty()) throw dist::CollectiveError(error);
    return result;
  }
  return run_convert_local(options);
}

ConvertResult run_convert_local(const ConvertOptions& options) {
  const Stopwatch clock;
  // Plan from metadata before anything touches the destination.
  const Conversion c = plan_conversion(options);
  print_notes(options, c);

  if (options.threads > 0) set_num_threads(options.threads);
  model_state::ReadPlan plan;
  try {
    plan = model_state::convert_model_state_local(options.source, options.dest, c,
                                                  read_options(options, c), write_options(options));
  } catch (const model_state::CheckpointExistsError& e) {
    refuse_existing(e);
  }
  note_config(options, c);
  note_budget(options, plan);
  note_oversized(options, plan);
  return summarize(options, c, plan, clock, 1);
}

Command add_convert(CLI::App& app) {
  auto options = std::make_shared<ConvertOptions>();
  CLI::App* command =
      app.add_subcommand("convert", "Convert a checkpoint through a spec into a new checkpoint");
  command->add_option("checkpoint", options->source, "Source checkpoint")->required();
  command->add_option("out", options->dest, "Destination directory")->required();
  command->add_option(
      "--spec", options->spec,
      std::string("The spec (original -> converted; with --reverse, optional): ") + kSpecHelp);
  command->add_flag(
      "--reverse", options->reverse,
      "Undo the conversion that wrote CHECKPOINT (uses its " + std::string(kSidecarFileName) + ")");
  command->add_flag("--allow-lossy", options->allow_lossy,
                    "With --reverse: undo casts that lost values too, back to the recorded dtypes "
                    "(the rounded values stay rounded; a note names the tensors)");
  add_set_option(*command, options->params);
  add_size_option(*command, "--shard-size", options->shard_size,
                  "Most tensor bytes per output shard");
  add_threads_option(*command, options->threads);
  add_size_option(*command, "--memory-budget", options->memory_budget,
                  "Bytes of tensors read ahead and not yet written");
  add_device_option(*command, options->device);
  command->add_flag("--overwrite", options->overwrite, "Replace a checkpoint already in OUT");
  add_progress_flag(*command, options->show_progress);
  command->add_flag_callback(
      "--no-hashes", [options] { options->write_hashes = false; },
      "Do not write d9d-hashes.json (every shard's SHA-256, which `d9d verify OUT --sha256` "
      "checks) beside the checkpoint");
  command->add_flag_callback(
      "--no-fsync", [options] { options->fsync = false; },
      "Do not fsync the output (scratch output only: the files are still renamed "
      "into place whole, but a power loss may leave them torn)");
  return {command,
          [options] {
            if (!options->spec && !options->reverse) {
              return usage_error("convert", "--spec is required (except with --reverse)");
            }
            if (options->allow_lossy && !options->reverse) {
              return usage_error("convert", "--allow-lossy goes with --reverse");
            }
            run_convert(*options);
            return kExitOk;
          },
          /*distributed=*/true};
}

}  // namespace d9d::cli
