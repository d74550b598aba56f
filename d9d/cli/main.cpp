// d9d: inspect, plan, convert and verify safetensors checkpoints; `d9d demo` shows it all.
//
// Exit status: 0 ok, 1 failure (an error, or verify/plan/demo answering "no"), 2 usage error.
// Errors print as "d9d: error: <message>" on standard error.
//
// Under `mpirun -np N` (N > 1) only `convert` runs, on every rank (Note [distributed conversion]);
// rank 0 alone prints. An error every rank agreed on ends every rank with status 1; an error only
// this rank knows about ends the whole job (Note [bounded failure]), so no rank waits for it.
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include <d9d/dist/process_group.hpp>
#include <d9d/error.hpp>

#include "cli.hpp"

namespace {

using namespace d9d::cli;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

const char* const kSizeHelp =
    "sizes: a number with an optional unit; B KB MB GB TB are powers of 1000 (as huggingface_hub's "
    "\"5GB\"), KiB MiB GiB TiB powers of 1024 (the reference's shard_size_gb=1 is 1GiB)";

// A validator that accepts what parse_size accepts.
CLI::Validator size_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          if (parse_size(text) <= 0) return "the size must be positive";
          return {};
        } catch (const d9d::Error& e) {
          return e.what();
        }
      },
      "SIZE");
}

CLI::Validator device_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          d9d::Device::parse(text);
          return {};
        } catch (const d9d::Error& e) {
          return e.what();
        }
      },
      "DEVICE");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "d9d: streamed, declarative transformation of safetensors checkpoints.\n"
      "Start with `d9d demo`; see examples/specs/ for spec files."};
  app.footer(std::string(kSizeHelp) + "\nexit status: 0 ok, 1 failure, 2 usage error");
  app.set_version_flag("--version", "d9d 0.1.0");
  app.require_subcommand(1);

  // inspect
  InspectOptions inspect;
  CLI::App* inspect_cmd = app.add_subcommand(
      "inspect", "List a checkpoint's tensors (name, dtype, shape, bytes, file)");
  inspect_cmd
      ->add_option("checkpoint", inspect.checkpoint,
                   "Checkpoint directory, index file or .safetensors file")
      ->required();
  inspect_cmd->add_flag("--json", inspect.json, "Print JSON instead of a table");

  // plan
  PlanOptions plan;
  std::string plan_shard_size = "5GB";
  CLI::App* plan_cmd = app.add_subcommand(
      "plan", "Dry run of a conversion from metadata alone: outputs, shards, coverage");
  plan_cmd->add_option("checkpoint", plan.checkpoint, "Source checkpoint")->required();
  plan_cmd->add_option("--spec", plan.spec, "Spec file (original -> converted)");
  plan_cmd->add_flag("--reverse", plan.reverse,
                     "Plan undoing the conversion that wrote CHECKPOINT (uses its " +
                         std::string(kSidecarFileName) + ")");
  plan_cmd->add_option("--shard-size", plan_shard_size, "Most tensor bytes per output shard")
      ->check(size_validator())
      ->capture_default_str();
  plan_cmd->add_flag("--json", plan.json, "Print JSON");

  // convert
  ConvertOptions convert;
  std::string convert_shard_size = "5GB";
  std::string convert_budget = "256MiB";  // Note [CLI memory budget]
  std::string convert_device = "cpu";
  bool no_progress = false;
  CLI::App* convert_cmd =
      app.add_subcommand("convert", "Convert a checkpoint through a spec into a new checkpoint");
  convert_cmd->add_option("checkpoint", convert.source, "Source checkpoint")->required();
  convert_cmd->add_option("out", convert.dest, "Destination directory")->required();
  convert_cmd->add_option("--spec", convert.spec,
                          "Spec file (original -> converted); with --reverse, optional");
  convert_cmd->add_flag(
      "--reverse", convert.reverse,
      "Undo the conversion that wrote CHECKPOINT (uses its " + std::string(kSidecarFileName) + ")");
  convert_cmd->add_option("--shard-size", convert_shard_size, "Most tensor bytes per output shard")
      ->check(size_validator())
      ->capture_default_str();
  convert_cmd->add_option("--threads", convert.threads, "Reader threads (0: one per core)")
      ->check(CLI::NonNegativeNumber);
  convert_cmd
      ->add_option("--memory-budget", convert_budget,
                   "Bytes of tensors read ahead and not yet written")
      ->check(size_validator())
      ->capture_default_str();
  convert_cmd->add_option("--device", convert_device, "cpu or cuda:N")
      ->check(device_validator())
      ->capture_default_str();
  convert_cmd->add_flag("--overwrite", convert.overwrite, "Replace a checkpoint already in OUT");
  convert_cmd->add_flag("--no-progress", no_progress, "No progress bar");
  bool no_fsync = false;
  convert_cmd->add_flag("--no-fsync", no_fsync,
                        "Do not fsync the output (scratch output only: the files are still "
                        "renamed into place whole, but a power loss may leave them torn)");

  // verify
  VerifyOptions verify;
  std::string verify_budget = "256MiB";
  bool verify_no_progress = false;
  CLI::App* verify_cmd = app.add_subcommand(
      "verify", "Compare two checkpoints tensor by tensor, bit for bit (exit 1 if they differ)");
  verify_cmd->add_option("a", verify.a, "Checkpoint A")->required();
  verify_cmd->add_option("b", verify.b, "Checkpoint B")->required();
  verify_cmd->add_option("--spec", verify.spec,
                         "Convert A through this spec (streamed) before comparing with B");
  verify_cmd->add_option("--threads", verify.threads, "Reader threads (0: one per core)")
      ->check(CLI::NonNegativeNumber);
  verify_cmd->add_option("--memory-budget", verify_budget, "Bytes of A read ahead")
      ->check(size_validator())
      ->capture_default_str();
  verify_cmd->add_option("--max-shown", verify.max_shown, "Differing tensors shown in detail")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  verify_cmd->add_flag("--no-progress", verify_no_progress, "No progress bar");

  // demo
  DemoOptions demo;
  std::string demo_shard_size = "auto";
  CLI::App* demo_cmd = app.add_subcommand(
      "demo",
      "Make a Llama-shaped checkpoint, convert it to fused QKV + gate_up and back, verify it is "
      "bit-exact, and print the throughput");
  demo_cmd->add_option("--hidden", demo.hidden, "Hidden size")->capture_default_str();
  demo_cmd->add_option("--layers", demo.layers, "Decoder layers")->capture_default_str();
  demo_cmd->add_option("--heads", demo.heads, "Attention heads")->capture_default_str();
  demo_cmd->add_option("--kv-heads", demo.kv_heads, "Key/value heads (GQA)")->capture_default_str();
  demo_cmd->add_option("--intermediate", demo.intermediate, "MLP intermediate size")
      ->capture_default_str();
  demo_cmd->add_option("--vocab", demo.vocab, "Vocabulary size")->capture_default_str();
  demo_cmd->add_option("--dtype", demo.dtype, "BF16, F16 or F32")
      ->check(CLI::IsMember({"BF16", "F16", "F32"}))
      ->capture_default_str();
  demo_cmd
      ->add_option("--shard-size", demo_shard_size,
                   "Shard size of every checkpoint (auto: a quarter of the model, at least its "
                   "largest tensor)")
      ->check(CLI::IsMember({"auto"}) | size_validator())
      ->capture_default_str();
  demo_cmd->add_option("--seed", demo.seed, "Seed of the random weights")->capture_default_str();
  demo_cmd->add_option("--threads", demo.threads, "Reader threads (0: one per core)")
      ->check(CLI::NonNegativeNumber);
  demo_cmd->add_option("--dir", demo.dir,
                       "Work here and keep the checkpoints (default: a temporary directory)");
  demo_cmd->add_flag("--keep", demo.keep, "Keep the temporary directory");
  demo_cmd->add_flag("--progress", demo.progress, "Show progress bars");

  d9d::dist::ProcessGroupPtr world;
  try {
    world = d9d::dist::init();  // a world of one unless a launcher started this process
  } catch (const d9d::Error& e) {
    std::cerr << "d9d: error: " << e.what() << "\n";
    return kExitFailure;
  }
  const bool rank0 = world->rank() == 0;

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (!rank0) return e.get_exit_code() == 0 ? kExitOk : kExitUsage;  // rank 0 says it
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (world->size() > 1 && !*convert_cmd) {
    if (rank0) {
      std::cerr << "d9d: only `d9d convert` runs under mpirun with more than one process (this "
                   "job has "
                << world->size() << ")\n";
    }
    return kExitUsage;
  }

  try {
    if (*inspect_cmd) return run_inspect(inspect);
    if (*plan_cmd) {
      if (!plan.spec && !plan.reverse) {
        std::cerr << "d9d plan: --spec is required (except with --reverse)\n"
                  << "Run with --help for more information.\n";
        return kExitUsage;
      }
      plan.shard_size = parse_size(plan_shard_size);
      return run_plan(plan);
    }
    if (*convert_cmd) {
      if (!convert.spec && !convert.reverse) {
        std::cerr << "d9d convert: --spec is required (except with --reverse)\n"
                  << "Run with --help for more information.\n";
        return kExitUsage;
      }
      convert.shard_size = parse_size(convert_shard_size);
      convert.memory_budget = parse_size(convert_budget);
      convert.device = d9d::Device::parse(convert_device);
      convert.progress = !no_progress;
      convert.fsync = !no_fsync;
      run_convert(convert);
      return kExitOk;
    }
    if (*verify_cmd) {
      verify.memory_budget = parse_size(verify_budget);
      verify.progress = !verify_no_progress;
      return run_verify(verify).equal() ? kExitOk : kExitFailure;
    }
    if (*demo_cmd) {
      demo.shard_size = demo_shard_size == "auto" ? 0 : parse_size(demo_shard_size);
      return run_demo(demo);
    }
  } catch (const d9d::dist::CollectiveError& e) {  // every rank has it: rank 0 says it
    if (rank0) std::cerr << "d9d: error: " << e.what() << "\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    const std::string what =
        dynamic_cast<const std::bad_alloc*>(&e) != nullptr ? "out of memory" : e.what();
    if (world->size() == 1) {
      std::cerr << "d9d: error: " << what << "\n";
      return kExitFailure;
    }
    d9d::dist::abort_job(kExitFailure,
                         "d9d: error: [rank " + std::to_string(world->rank()) + "] " + what);
  }
  return kExitUsage;
}
