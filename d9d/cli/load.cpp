// d9d load: an engine's load, from the shell. Every output of the spec (without one, every tensor
// of the checkpoint) is read into a tensor of its own on --device, the way an engine fills the
// buffers it allocated (model_state::load_model_state), and the figures are printed: bytes,
// seconds, GB/s, and how each file was read. --cold drops the files from the page cache first, so
// a cold start can be measured without root.
#include <fcntl.h>

#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"

#include <d9d/dist/process_group.hpp>
#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/mapper/adapters.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/tensor.hpp>

namespace d9d::cli {

namespace {

// Note [cold start]: posix_fadvise(POSIX_FADV_DONTNEED) asks the kernel to drop a file's clean
// pages from the page cache; the next read of them comes from the disk. It needs no privilege
// (unlike writing /proc/sys/vm/drop_caches) and touches only the checkpoint's files. Pages that
// are dirty (a checkpoint just written and not yet flushed) or mapped by a process stay: `sync`
// first to measure a checkpoint that was just written.
void drop_from_page_cache(const fs::path& dir, const std::vector<std::string>& files) {
  for (const std::string& name : files) {
    const fs::path path = dir / name;
    const io::FileDescriptor fd = io::FileDescriptor::open(path, O_RDONLY);
    if (const int err = ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED); err != 0) {
      io::throw_errno("posix_fadvise(DONTNEED)", path, err);
    }
  }
}

// How a file was read, from the read engine's log: "uring 1.00 GB", or each backend's share when
// more than one read it ("pread 10.0 MB + uring 990 MB"), then the notes of fallbacks.
std::string how_read(const io::ReadLog::File& file) {
  std::string text;
  for (const auto& [backend, bytes] : file.bytes) {
    if (!text.empty()) text += " + ";
    text += std::string(io::to_string(backend)) + " " + format_bytes(static_cast<int64_t>(bytes));
  }
  for (const std::string& note : file.notes) text += " (" + note + ")";
  return text;
}

}  // namespace

int run_load(const LoadOptions& options) {
  const io::Checkpoint ck = io::Checkpoint::open(options.checkpoint);
  // Under mpirun: each rank loads its share of a tp spec (Note [a rank's share] in common.cpp).
  const dist::ProcessGroup& world = *dist::world();
  std::string rank_label;
  if (world.rank() == 0) warn_unlisted(ck);  // (a spec's conversion finds the same: said here)
  Conversion c;
  if (options.spec) {
    Params params = options.params;
    if (world.size() > 1) {
      const std::optional<Params> mine =
          per_rank_params(load_spec(*options.spec, options.checkpoint).text, options.params,
                          world.rank(), world.size());
      if (!mine) {
        return usage_error("load",
                           "under mpirun, d9d load needs a spec with params tp and "
                           "tp_rank (each rank loads its share), and no --set tp_rank");
      }
      params = *mine;
      rank_label = " rank " + std::to_string(world.rank()) + " of " + std::to_string(world.size());
    }
    c = make_conversion(options.checkpoint, options.spec, /*reverse=*/false, params);
  } else if (world.size() > 1) {
    return usage_error("load", "under mpirun, d9d load needs a tensor-parallel --spec");
  } else {
    c.mapper = mapper::identity_mapper_from_names(ck.keys());
  }
  const model_state::ReadPlan plan = model_state::plan_read(ck, *c.mapper);
  const auto outputs = plan.outputs();
  D9D_CHECK(outputs.has_value(), "load: the spec's outputs cannot be inferred");
  if (options.threads > 0) set_num_threads(options.threads);

  // The engine's buffers first (as an engine allocates its weights before it loads them).
  const Stopwatch alloc_clock;
  model_state::StateDict targets;
  for (const auto& [name, spec] : *outputs) {
    targets.emplace(name, Tensor::empty(spec.shape, spec.dtype, options.device));
  }
  const double alloc_seconds = alloc_clock.seconds();

  if (options.cold) drop_from_page_cache(ck.dir(), plan.files);
  model_state::ReadOptions ro;
  ro.memory_budget = options.memory_budget;
  ro.show_progress = options.show_progress;
  ro.label = "Loading";
  ro.io = options.io;
  ro.verify = options.sha256;
  ro.pushdown = options.pushdown;
  io::ReadLog log;
  ro.read_log = &log;
  const Stopwatch clock;
  model_state::load_model_state(options.checkpoint, c.mapper, options.device, targets, ro);
  const double seconds = clock.seconds();

  // One write per rank, so that the ranks' reports do not interleave.
  std::ostringstream out;
  const int64_t read_bytes = options.pushdown ? plan.read_bytes : plan.input_bytes;
  out << "d9d load" << rank_label << ": " << ck.dir().string() << " ("
      << count_of(static_cast<int64_t>(plan.files.size()), "file") << ", "
      << format_bytes(read_bytes) << " read"
      << (read_bytes < plan.input_bytes ? " of " + format_bytes(plan.input_bytes) : std::string())
      << ")" << (options.spec ? " through " + c.sidecar.spec_origin : std::string()) << " -> "
      << options.device.str() << (options.cold ? ", from a cold page cache" : "")
      << (options.sha256 ? ", every file checked against its SHA-256" : "")
      << (options.pushdown ? "" : ", whole tensors read (--no-pushdown)") << "\n";
  // Every file the plan reads, with how the engine read it (host and cuda:N targets alike).
  const std::map<std::string, io::ReadLog::File> reads = log.files();
  for (const std::string& file : plan.files) {
    const auto it = reads.find((ck.dir() / file).string());
    out << "  " << file << "  "
        << (it != reads.end() ? how_read(it->second) : std::string("(not read)")) << "\n";
  }
  out << "  targets: " << count_of(plan.output_count, "tensor") << ", "
      << format_bytes(plan.output_bytes) << ", allocated in " << format_seconds(alloc_seconds)
      << "\n";
  out << "loaded " << format_bytes(plan.output_bytes) << " in " << format_seconds(seconds) << ": "
      << format_rate(plan.output_bytes, seconds) << "\n";
  std::cout << out.str() << std::flush;
  return kExitOk;
}

Command add_load(CLI::App& app) {
  auto options = std::make_shared<LoadOptions>();
  CLI::App* command = app.add_subcommand(
      "load", "Load a checkpoint (through a spec) into memory as an engine does, and time it");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint")->required();
  command->add_option(
      "--spec", options->spec,
      std::string("Load the outputs of this spec (default: every tensor). ") + kSpecHelp);
  add_set_option(*command, options->params);
  add_device_option(*command, options->device);
  add_threads_option(*command, options->threads);
  add_size_option(*command, "--memory-budget", options->memory_budget,
                  "Bytes of groups read ahead and not yet in their targets");
  command->add_flag("--cold", options->cold,
                    "Drop the checkpoint's files from the page cache first (posix_fadvise "
                    "DONTNEED; no root needed), to time a cold start");
  command
      ->add_option_function<std::string>(
          "--io", [options](const std::string& text) { options->io = io::parse_io_backend(text); },
          "How the files are read: auto (per file: pread from the page cache, O_DIRECT through "
          "io_uring from a cold disk), mmap, pread, direct (O_DIRECT) or uring")
      ->check(CLI::IsMember({"auto", "mmap", "pread", "direct", "uring"}))
      ->default_str("auto");
  command->add_flag(
      "--sha256", options->sha256,
      "Check every file read against its SHA-256 first (d9d-hashes.json or a hub "
      "snapshot's blob names; exit 1 naming a file that differs); counted in the time");
  command->add_flag("!--no-pushdown", options->pushdown,
                    "Read every input whole and slice after (what loaders without slice pushdown "
                    "do), to compare");
  add_progress_flag(*command, options->show_progress);
  // Under mpirun with a tp spec: each rank loads its share.
  return {command, [options] { return run_load(*options); }, /*distributed=*/true};
}

}  // namespace d9d::cli
