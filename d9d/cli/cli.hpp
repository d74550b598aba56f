// The d9d command-line tool: its commands and the helpers they share.
//
// Each command is a function over an options struct (filled from the command line by the options
// the command registers in its own file, add_<command>, or by `d9d demo`, which drives convert
// and verify itself). A command returns its exit status: 0 when it did what was asked, 1 when the
// answer is "no" (verify found differences, plan found missing inputs); failures are d9d::Error
// exceptions, which main() prints and turns into 1.
//
// Note [one default]: an option whose library counterpart has a default (--shard-size:
// WriteOptions::shard_size; --memory-budget: ReadOptions::memory_budget) starts from the library's
// value, read from a default-constructed options struct, and --help shows that value; the default
// is written nowhere else.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <d9d/io/checkpoint.hpp>
#include <d9d/mapper/builtin_specs.hpp>
#include <d9d/mapper/mapper.hpp>
#include <d9d/mapper/quantized.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/conversion.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/sizes.hpp>
#include <d9d/model_state/writer.hpp>
#include <d9d/tensor.hpp>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace d9d::cli {

namespace fs = std::filesystem;

// ---- sizes and formatting -----------------------------------------------------------------------

// Sizes on the command line: Note [size units] in <d9d/model_state/sizes.hpp>.
using model_state::parse_size;
// "302.1 MB" (decimal units, as parse_size reads them back); "512 B" below 1 KB.
std::string format_bytes(int64_t bytes);
// Exactly `bytes`, in the largest unit that divides it, as parse_size reads it back: "4GiB",
// "5GB", "512MiB", "1000001B".
std::string format_size(int64_t bytes);
// "1.23 GB/s".
std::string format_rate(int64_t bytes, double seconds);
// "[4096, 4096]".
std::string format_shape(const Shape& shape);
// "1 tensor", "3 tensors".
std::string count_of(int64_t n, std::string_view noun);
// Fixed-point seconds: "0.42 s".
std::string format_seconds(double seconds);

// The whole file as text; throws io::IoError naming `what` and the path.
std::string read_text_file(const fs::path& path, std::string_view what);

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// ---- building the mapper ------------------------------------------------------------------------

// The sidecar, forward conversions and single-process conversions live in model_state (shared
// with the C ABI's d9d_convert): Note [conversion sidecar] in <d9d/model_state/conversion.hpp>.
using model_state::checkpoint_dir;
using model_state::Conversion;
using model_state::forward_conversion;
using model_state::kSidecarFileName;
using model_state::parse_sidecar;
using model_state::Sidecar;
using model_state::unlisted_note;
// Quantized checkpoints: Note [config.json] in <d9d/model_state/conversion.hpp>.
using model_state::checkpoint_specs;
using model_state::kConfigFileName;
using model_state::quantization_config;

// Prints unlisted_note() as "d9d: warning: ..." on standard error, when there is one (Note
// [unlisted tensors] in <d9d/model_state/conversion.hpp>: every command that reads a checkpoint
// says so).
void warn_unlisted(const io::Checkpoint& checkpoint);

// ---- quantized checkpoints ----------------------------------------------------------------------

// "fp8_block [128, 128]", "nvfp4 (global scale: divide)": a pair's format, for tables.
std::string quantized_format_str(const mapper::QuantizedPair& pair);
// The quantized weights among `specs` by key: weight, scale and global scale keys map to the
// pair's index in `pairs` (pairs whose shapes do not fit are left out: they show as they are).
std::map<std::string, size_t> quantized_keys(const std::vector<mapper::QuantizedPair>& pairs);

// A spec's params as the command line sets them (--set name=value).
using Params = std::map<std::string, int64_t>;

// The inverse of the conversion that wrote `src` (Note [conversion sidecar]). `spec_text`, when
// given, replaces the sidecar's spec (it must still describe original -> converted). The spec's
// params are those the sidecar recorded, `params` set over them. `allow_lossy` (--allow-lossy):
// casts that lost values are undone too (mapper::SpecParams::lossy_inverse), and
// Conversion::lossy_note says which tensors come back holding rounded values.
Conversion reverse_conversion(const fs::path& src, const std::optional<std::string>& spec_text,
                              const std::string& spec_origin, const Params& params = {},
                              bool allow_lossy = false);
// A spec as --spec names it: "auto" (the built-in spec that the checkpoint's config.json picks:
// Note [built-in specs] in d9d/mapper/builtin_specs.cpp), a spec file, or a built-in spec's name
// ("qwen3_moe"; a file of that name wins). `note` says which built-in spec "auto" picked.
struct SpecChoice {
  std::string text;
  std::string origin;  // "my_spec.json", "specs/qwen3_moe.json (built-in)"
  std::string note;    // empty unless "auto"
};
SpecChoice load_spec(const std::string& arg, const fs::path& checkpoint);
inline constexpr const char* kSpecHelp =
    "A spec file, a built-in spec's name (`d9d specs` lists them), or auto: the built-in spec "
    "that the checkpoint's config.json names";
// forward_conversion or reverse_conversion, from command-line options (`spec`: as load_spec
// takes it).
Conversion make_conversion(const fs::path& src, const std::optional<std::string>& spec,
                           bool reverse, const Params& params = {}, bool allow_lossy = false);

// ---- the command line ---------------------------------------------------------------------------

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
// The last lines of --help: every command's, and (kSizesHelp) those of commands that take sizes.
inline constexpr const char* kExitStatusHelp = "exit status: 0 ok, 1 failure, 2 usage error";
inline constexpr const char* kSizesHelp =
    "sizes: a number with an optional unit; B KB MB GB TB are powers of 1000 (as "
    "huggingface_hub's \"5GB\"), KiB MiB GiB TiB powers of 1024 (the reference's "
    "shard_size_gb=1 is 1GiB)";

// A command as main() sees it: its subcommand, with the command's options registered on it, and
// what runs it once the command line is parsed (returning the exit status).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
  bool distributed = false;  // runs under mpirun with more than one process
};

Command add_inspect(CLI::App& app);
Command add_plan(CLI::App& app);
Command add_convert(CLI::App& app);
Command add_verify(CLI::App& app);
Command add_demo(CLI::App& app);
Command add_specs(CLI::App& app);
Command add_load(CLI::App& app);

// Option kinds that several commands take, registered alike.
//   --NAME SIZE (Note [size units]), into `bytes`; --help shows its current value (Note [one
//   default]) and, below, how sizes are written (kSizesHelp).
CLI::Option* add_size_option(CLI::App& command, const std::string& name, int64_t& bytes,
                             const std::string& help);
//   --threads N: d9d's worker threads (d9d::set_num_threads), 0..kMaxThreads; 0 leaves d9d's own
//   count.
CLI::Option* add_threads_option(CLI::App& command, int& threads);
//   --device cpu|cuda:N, into `device` (checked by Device::parse); --help shows its current value.
CLI::Option* add_device_option(CLI::App& command, Device& device);
//   --progress / --no-progress, into `show_progress`; --help shows its current value.
CLI::Option* add_progress_flag(CLI::App& command, bool& show_progress);
//   --set NAME=VALUE (repeatable): a value for the spec's param NAME (an integer, or true / false
//   for 1 / 0), which wins over config.json and the spec's default (<d9d/mapper/spec.hpp>).
CLI::Option* add_set_option(CLI::App& command, Params& params);

// Under mpirun: the params of rank `rank` of `size` for a spec (its text) declaring params tp and
// tp_rank, when --set (`given`) names no tp_rank (Note [a rank's share] in common.cpp); nullopt
// otherwise.
std::optional<Params> per_rank_params(const std::string& spec_text, const Params& given,
                                      int rank, int size);
// "rank-0000r": the directory of rank r's checkpoint under convert's OUT.
std::string rank_dir_name(int rank);

// A usage error found after parsing: prints "d9d COMMAND: MESSAGE" and CLI11's hint; returns
// kExitUsage.
int usage_error(std::string_view command, std::string_view message);

// ---- commands -----------------------------------------------------------------------------------

struct InspectOptions {
  fs::path checkpoint;
  bool json = false;
};
int run_inspect(const InspectOptions& options);

struct PlanOptions {
  fs::path checkpoint;
  std::optional<std::string> spec;  // as load_spec takes it
  bool reverse = false;
  bool allow_lossy = false;  // --allow-lossy (with reverse)
  Params params;             // --set
  int64_t shard_size = model_state::WriteOptions{}.shard_size;
  bool json = false;
  bool dot = false;  // the mapping graph for Graphviz instead of the report
};
int run_plan(const PlanOptions& options);

struct ConvertOptions {
  fs::path source;
  fs::path dest;
  std::optional<std::string> spec;  // as load_spec takes it
  // The spec's text, when it does not come from a file (the demo's embedded spec).
  std::optional<std::string> spec_text;
  std::string spec_origin;
  bool reverse = false;
  bool allow_lossy = false;  // --allow-lossy: with reverse, undo lossy casts too
  Params params;             // --set
  int64_t shard_size = model_state::WriteOptions{}.shard_size;
  int threads = 0;  // d9d::set_num_threads when > 0
  int64_t memory_budget = model_state::ReadOptions{}.memory_budget;
  Device device = Device::cpu();
  bool overwrite = false;
  bool show_progress = true;
  bool fsync = true;
  bool write_hashes = true;  // d9d-hashes.json beside the output (--no-hashes)
  bool quiet = false;  // no summary line (the demo prints its own)
};

struct ConvertResult {
  int64_t input_count = 0;
  int64_t input_bytes = 0;
  int64_t output_count = 0;
  int64_t output_bytes = 0;
  int64_t shard_count = 0;
  double seconds = 0;
};
ConvertResult run_convert(const ConvertOptions& options);
// The conversion in this process alone, whatever the MPI world (run_convert's body without it).
ConvertResult run_convert_local(const ConvertOptions& options);


struct LoadOptions {
  fs::path checkpoint;
  std::optional<std::string> spec;  // as load_spec takes it; none: every tensor as it is
  Params params;                    // --set
  Device device = Device::cpu();
  int threads = 0;  // d9d::set_num_threads when > 0
  int64_t memory_budget = model_state::ReadOptions{}.memory_budget;
  bool cold = false;  // drop the files from the page cache first (Note [cold start] in load.cpp)
  io::IoBackend io = io::IoBackend::kAuto;  // --io
  bool sha256 = false;                      // --sha256: ReadOptions::verify
  bool pushdown = true;                     // --no-pushdown: ReadOptions::pushdown
  bool show_progress = true;
};
int run_load(const LoadOptions& options);

struct VerifyOptions {
  fs::path a;
  fs::path b;
  std::optional<std::string> spec;  // as load_spec takes it
  std::optional<std::string> spec_text;
  std::string spec_origin;
  Params params;    // --set
  int threads = 0;  // d9d::set_num_threads when > 0
  int64_t memory_budget = model_state::ReadOptions{}.memory_budget;
  bool show_progress = true;
  int max_shown = 10;  // differing tensors shown in detail
  bool quiet = false;  // no report when equal
  bool sha256 = false;  // --sha256: check the files against their hash list first
  // Floating-point elements that pass though their bits differ (Note [verify tolerance]); zero
  // and nullopt: bit for bit.
  double atol = 0;
  double rtol = 0;
  std::optional<int64_t> max_ulp;
};

struct VerifyResult {
  int64_t compared = 0;   // tensors compared byte by byte
  int64_t bytes = 0;      // bytes compared
  int64_t differing = 0;  // tensors with different bytes (beyond the tolerance), dtypes or shapes
  int64_t within_tolerance = 0;  // elements whose bits differ but that the tolerance passes
  std::vector<std::string> only_in_a;
  std::vector<std::string> only_in_b;
  double seconds = 0;
  bool equal() const { return differing == 0 && only_in_a.empty() && only_in_b.empty(); }
};
VerifyResult run_verify(const VerifyOptions& options);

struct DemoOptions {
  int64_t hidden = 1024;
  int64_t layers = 8;
  int64_t heads = 16;
  int64_t kv_heads = 4;
  int64_t intermediate = 2816;
  int64_t vocab = 32000;
  std::string dtype = "BF16";
  int64_t shard_size = 0;  // 0: about a quarter of the model, at least its largest tensor
  uint64_t seed = 0;
  int threads = 0;  // d9d::set_num_threads when > 0
  std::optional<fs::path> dir;
  bool keep = false;
  bool show_progress = false;
};
int run_demo(const DemoOptions& options);

}  // namespace d9d::cli
