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
#include <d9d/mapper/mapper.hpp>
#include <d9d/mapper/quantized.hpp>
#include <d9d/mapper/spec.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>
#include <d9d/tensor.hpp>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace d9d::cli {

namespace fs = std::filesystem;

// ---- sizes and formatting -----------------------------------------------------------------------

// Note [size units]: a size on the command line is a number with an optional unit. Decimal units
// are powers of 1000 and binary units powers of 1024, as huggingface_hub's max_shard_size ("5GB"
// = 5 * 10^9 bytes) and the IEC: B, KB, MB, GB, TB = 10^0..10^12; KiB, MiB, GiB, TiB =
// 2^10..2^40. Units are case-insensitive ("5gb"), a space before the unit is allowed, fractions
// are allowed ("1.5GiB", rounded down to a whole byte). Single letters ("5G") are refused as
// ambiguous. (The reference's shard_size_gb counts GiB: its 1.0 is --shard-size 1GiB.)
//
// Throws ValueError naming the text.
int64_t parse_size(std::string_view text);
// "302.1 MB" (decimal units, as parse_size reads them back); "512 B" below 1 kB.
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

// ---- the conversion sidecar ---------------------------------------------------------------------

// Note [conversion sidecar]: `d9d convert` leaves d9d-conversion.json next to the checkpoint it
// writes. Undoing a conversion needs more than the spec: the inverse of a concatenation must know
// the sizes of the parts (the q / k / v rows of a GQA model), a squeeze the shape it came from. So
// the sidecar records the spec's text and the name, dtype and shape of every tensor of the source
// checkpoint:
//
//   {"d9d_conversion": 1,
//    "spec": "<the spec file's text, verbatim>",
//    "spec_origin": "examples/specs/llama_hf_to_fused.json",
//    "source": {"model.embed_tokens.weight": ["BF16", [32000, 1024]], ...},
//    "dropped": ["..."]}                   (source keys the spec dropped, which cannot come back)
//
// `d9d convert OUT BACK --reverse` rebuilds the forward mapper with from_spec(spec, source keys)
// and writes mapper->inverse(source specs). The sidecar is not a .safetensors file and not in the
// index, so checkpoint readers (io::Checkpoint, transformers, the reference) ignore it. It is
// written last, atomically, after the index: an interrupted conversion leaves none.
inline constexpr std::string_view kSidecarFileName = "d9d-conversion.json";

struct Sidecar {
  std::string spec;
  std::string spec_origin;
  mapper::SpecDict source;
  std::vector<std::string> dropped;
};

std::string sidecar_json(const Sidecar& sidecar);
// Parses and checks a sidecar; `name` is used in error messages (ValueError).
Sidecar parse_sidecar(std::string_view json, std::string_view name);
// Writes dir/d9d-conversion.json through a temporary file and a rename.
void write_sidecar(const fs::path& dir, const Sidecar& sidecar, bool fsync);

// The directory of a checkpoint path (a directory, an index file or a .safetensors file).
fs::path checkpoint_dir(const fs::path& path);

// ---- quantized checkpoints ----------------------------------------------------------------------

// Note [config.json]: a checkpoint directory may hold config.json (transformers' model config).
// d9d reads its "quantization_config" to recognize quantized weights (inspect, plan, convert), and
// `convert` writes it into the output directory, after the index, with that entry brought up to
// date: removed when no quantized weight is left, the dequantized modules added to the method's
// list of unquantized modules when some are ("modules_to_not_convert": transformers' fp8 and
// mxfp4; "ignore": compressed-tensors; "exclude_modules": ModelOpt). Other files beside the
// shards (tokenizer, generation config) are not copied.
inline constexpr std::string_view kConfigFileName = "config.json";

// The text of dir/config.json; nullopt when there is none.
std::optional<std::string> read_config_json(const fs::path& dir);
// The quantization_config of dir/config.json; nullopt when there is no such file or entry.
std::optional<mapper::QuantizationConfig> quantization_config(const fs::path& dir);
// The dtype and shape of every tensor of `ck`.
mapper::SpecDict checkpoint_specs(const io::Checkpoint& ck);
// "fp8_block [128, 128]", "nvfp4 (global scale: divide)": a pair's format, for tables.
std::string quantized_format_str(const mapper::QuantizedPair& pair);
// The quantized weights among `specs` by key: weight, scale and global scale keys map to the
// pair's index in `pairs` (pairs whose shapes do not fit are left out: they show as they are).
std::map<std::string, size_t> quantized_keys(const std::vector<mapper::QuantizedPair>& pairs);

// ---- building the mapper ------------------------------------------------------------------------

// A mapper for a checkpoint, with what the spec expansion reported.
struct Conversion {
  mapper::MapperPtr mapper;
  mapper::SpecMapping mapping;  // of the forward spec (for --reverse: of the original keys)
  Sidecar sidecar;              // what convert records (forward) or what it read (reverse)
  bool reverse = false;
  // The source's config.json quantization_config and quantized weights (Note [scales follow
  // their weights]): checked against the mapper before any byte is read.
  std::optional<mapper::QuantizationConfig> quantization;
  std::vector<mapper::QuantizedPair> quantized;
};

// The forward conversion of the checkpoint at `src` through the spec `spec_text`.
Conversion forward_conversion(const io::Checkpoint& src, std::string spec_text,
                              std::string spec_origin);
// The inverse of the conversion that wrote `src` (Note [conversion sidecar]). `spec_text`, when
// given, replaces the sidecar's spec (it must still describe original -> converted).
Conversion reverse_conversion(const fs::path& src, const std::optional<std::string>& spec_text,
                              const std::string& spec_origin);
// forward_conversion or reverse_conversion, from command-line options.
Conversion make_conversion(const fs::path& src, const std::optional<fs::path>& spec_path,
                           bool reverse);

// Writes dest/config.json from the source checkpoint directory's (Note [config.json]), when it
// has one; `outputs` are the converted checkpoint's tensors. Returns what it did, for a note
// ("config.json copied", "... with quantization_config removed"); empty when there was none.
std::string write_config(const fs::path& source_dir, const fs::path& dest, const Conversion& c,
                         const mapper::SpecDict& outputs, bool fsync);

// ---- the command line ---------------------------------------------------------------------------

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

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

// Option kinds that several commands take, registered alike.
//   --NAME SIZE (Note [size units]), into `bytes`; --help shows its current value (Note [one
//   default]).
CLI::Option* add_size_option(CLI::App& command, const std::string& name, int64_t& bytes,
                             const std::string& help);
//   --threads N: d9d's worker threads (d9d::set_num_threads); 0 leaves d9d's own count.
CLI::Option* add_threads_option(CLI::App& command, int& threads);
//   --progress / --no-progress, into `show_progress`; --help shows its current value.
CLI::Option* add_progress_flag(CLI::App& command, bool& show_progress);

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
  std::optional<fs::path> spec;
  bool reverse = false;
  int64_t shard_size = model_state::WriteOptions{}.shard_size;
  bool json = false;
};
int run_plan(const PlanOptions& options);

struct ConvertOptions {
  fs::path source;
  fs::path dest;
  std::optional<fs::path> spec;
  // The spec's text, when it does not come from a file (the demo's embedded spec).
  std::optional<std::string> spec_text;
  std::string spec_origin;
  bool reverse = false;
  int64_t shard_size = model_state::WriteOptions{}.shard_size;
  int threads = 0;  // d9d::set_num_threads when > 0
  int64_t memory_budget = model_state::ReadOptions{}.memory_budget;
  Device device = Device::cpu();
  bool overwrite = false;
  bool show_progress = true;
  bool fsync = true;
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

struct VerifyOptions {
  fs::path a;
  fs::path b;
  std::optional<fs::path> spec;
  std::optional<std::string> spec_text;
  std::string spec_origin;
  int threads = 0;  // d9d::set_num_threads when > 0
  int64_t memory_budget = model_state::ReadOptions{}.memory_budget;
  bool show_progress = true;
  int max_shown = 10;  // differing tensors shown in detail
  bool quiet = false;  // no report when equal
};

struct VerifyResult {
  int64_t compared = 0;   // tensors compared byte by byte
  int64_t bytes = 0;      // bytes compared
  int64_t differing = 0;  // tensors with different bytes, dtypes or shapes
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
