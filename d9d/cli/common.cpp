// Helpers shared by the commands: sizes, formatting, shared options, building mappers.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include <CLI/CLI.hpp>

#include "cli.hpp"

#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/mapper/leaf.hpp>

namespace d9d::cli {

// ---- sizes and formatting -----------------------------------------------------------------------

std::string format_bytes(int64_t bytes) {
  static const char* const kUnits[] = {"KB", "MB", "GB", "TB", "PB"};  // as --shard-size reads them
  if (bytes < 1000) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes) / 1000;  // at least 1 KB
  int unit = 0;
  while (value >= 1000 && unit < 4) {
    value /= 1000;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, value < 10 ? "%.2f %s" : "%.1f %s", value, kUnits[unit]);
  return buf;
}

std::string format_size(int64_t bytes) {
  static const std::pair<const char*, int64_t> kUnits[] = {
      {"TiB", int64_t{1} << 40}, {"TB", 1'000'000'000'000},
      {"GiB", int64_t{1} << 30}, {"GB", 1'000'000'000},
      {"MiB", int64_t{1} << 20}, {"MB", 1'000'000},
      {"KiB", int64_t{1} << 10}, {"KB", 1'000}};
  for (const auto& [unit, scale] : kUnits) {
    if (bytes >= scale && bytes % scale == 0) return std::to_string(bytes / scale) + unit;
  }
  return std::to_string(bytes) + "B";
}

std::string format_rate(int64_t bytes, double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB/s",
                seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0);
  return buf;
}

std::string format_shape(const Shape& shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

std::string count_of(int64_t n, std::string_view noun) {
  return std::to_string(n) + " " + std::string(noun) + (n == 1 ? "" : "s");
}

std::string format_seconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", seconds);
  return buf;
}

std::string read_text_file(const fs::path& path, std::string_view what) {
  try {
    return io::read_regular_file(path);  // a FIFO is refused, not waited on
  } catch (const io::IoError& e) {
    d9d::detail::throw_error<io::IoError>("cannot read ", what, ": ", e.what());
  }
}

// ---- options several commands take --------------------------------------------------------------

CLI::Option* add_size_option(CLI::App& command, const std::string& name, int64_t& bytes,
                             const std::string& help) {
  const CLI::Validator size(
      [](std::string& text) -> std::string {
        try {
          if (parse_size(text) <= 0) return "the size must be positive";
          return {};
        } catch (const d9d::Error& e) {
          return e.what();
        }
      },
      "SIZE");
  command.footer(std::string(kSizesHelp) + "\n" + kExitStatusHelp);
  return command
      .add_option_function<std::string>(
          name, [&bytes](const std::string& text) { bytes = parse_size(text); }, help)
      ->check(size)
      ->default_str(format_size(bytes));
}

CLI::Option* add_device_option(CLI::App& command, Device& device) {
  const CLI::Validator valid(
      [](std::string& text) -> std::string {
        try {
          Device::parse(text);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      "DEVICE");
  return command
      .add_option_function<std::string>(
          "--device", [&device](const std::string& text) { device = Device::parse(text); },
          "cpu or cuda:N")
      ->check(valid)
      ->default_str(device.str());
}

CLI::Option* add_threads_option(CLI::App& command, int& threads) {
  return command
      .add_option("--threads", threads,
                  "Worker threads for reading, copying and casting (0: one per core, or "
                  "$D9D_NUM_THREADS)")
      ->check(CLI::Range(0, kMaxThreads));
}

CLI::Option* add_progress_flag(CLI::App& command, bool& show_progress) {
  // Two flags, each applied where it stands on the command line (the last one wins); one flag
  // with a negated name would show in --help as "--progress,--no-progress{false}".
  const bool initially = show_progress;
  command
      .add_flag_callback(
          "--progress", [&show_progress] { show_progress = true; },
          std::string("Progress bars on standard error") + (initially ? " (the default)" : ""))
      ->trigger_on_parse();
  return command
      .add_flag_callback(
          "--no-progress", [&show_progress] { show_progress = false; },
          std::string("No progress bars") + (initially ? "" : " (the default)"))
      ->trigger_on_parse();
}

CLI::Option* add_set_option(CLI::App& command, Params& params) {
  // NAME=VALUE, checked as it is parsed; the value as parse_set reads it.
  auto parse_set = [](const std::string& text, std::string& name) -> std::optional<int64_t> {
    const size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) return std::nullopt;
    name = text.substr(0, eq);
    const std::string value = text.substr(eq + 1);
    if (value == "true") return 1;
    if (value == "false") return 0;
    int64_t v = 0;
    const char* end = value.data() + value.size();
    const auto [ptr, ec] = std::from_chars(value.data(), end, v);
    if (value.empty() || ec != std::errc() || ptr != end) return std::nullopt;
    return v;
  };
  const CLI::Validator set(
      [parse_set](std::string& text) -> std::string {
        std::string name;
        if (parse_set(text, name)) return {};
        return "expected NAME=VALUE with an integer (or true / false) VALUE, got \"" + text + "\"";
      },
      "NAME=VALUE");
  return command
      .add_option_function<std::vector<std::string>>(
          "--set",
          [&params, parse_set](const std::vector<std::string>& texts) {
            for (const std::string& text : texts) {
              std::string name;
              const std::optional<int64_t> value = parse_set(text, name);
              if (!params.emplace(name, *value).second) {
                throw CLI::ValidationError("--set", name + " is set twice");
              }
            }
          },
          "A value for the spec's param NAME (over config.json and the spec's default); "
          "repeatable")
      ->check(set)
      ->type_name("NAME=VALUE");
}

int usage_error(std::string_view command, std::string_view message) {
  std::cerr << "d9d " << command << ": " << message << "\n"
            << "Run with --help for more information.\n";
  return kExitUsage;
}

// Note [unlisted tensors] in <d9d/model_state/conversion.hpp>.
void warn_unlisted(const io::Checkpoint& checkpoint) {
  const std::string note = unlisted_note(checkpoint);
  if (!note.empty()) std::cerr << "d9d: warning: " << note << "\n";
}

// ---- quantized checkpoints ----------------------------------------------------------------------

std::string quantized_format_str(const mapper::QuantizedPair& pair) {
  std::string out(quant_format_name(pair.format));
  if (pair.format == QuantFormat::kFp8Block) {
    out += " [" + std::to_string(pair.block_rows) + ", " + std::to_string(pair.block_cols) + "]";
  }
  if (pair.global_scale_mode) {
    out += std::string(" (global scale: ") +
           std::string(global_scale_mode_name(*pair.global_scale_mode)) + ")";
  }
  return out;
}

std::map<std::string, size_t> quantized_keys(const std::vector<mapper::QuantizedPair>& pairs) {
  std::map<std::string, size_t> out;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const mapper::QuantizedPair& p = pairs[i];
    if (!p.misfit.empty()) continue;
    out.emplace(p.weight, i);
    out.emplace(p.scale, i);
    if (!p.global_scale.empty()) out.emplace(p.global_scale, i);
  }
  return out;
}

// ---- building the mapper ------------------------------------------------------------------------

namespace {

// The tensors that a lossy inverse gives back in their recorded dtype from a converted one that
// cannot hold every value of it (F32 from BF16): the values the conversion rounded stay rounded.
// "" when there are none.
std::string lossy_note(const mapper::ModelStateMapper& inverse, const mapper::SpecDict& converted,
                       const mapper::SpecDict& original) {
  std::map<std::pair<DType, DType>, std::vector<std::string>> lost;  // (original, via) -> names
  for (const mapper::StateGroup& g : inverse.state_dependency_groups()) {
    for (const std::string& out : g.outputs) {
      const auto o = original.find(out);
      if (o == original.end()) continue;
      for (const std::string& in : g.inputs) {
        const auto i = converted.find(in);
        if (i != converted.end() && !mapper::is_lossless_cast(o->second.dtype, i->second.dtype)) {
          lost[{o->second.dtype, i->second.dtype}].push_back(out);
          break;
        }
      }
    }
  }
  std::string note;
  for (const auto& [dtypes, names] : lost) {
    note += d9d::detail::str_cat(
        note.empty() ? "--allow-lossy: " : "; ",
        count_of(static_cast<int64_t>(names.size()), "tensor"),
        names.size() == 1 ? " comes back as " : " come back as ", dtype_name(dtypes.first),
        " holding the values the conversion rounded to ", dtype_name(dtypes.second), " (");
    for (size_t i = 0; i < names.size() && i < 5; ++i) note += (i ? ", " : "") + names[i];
    note += names.size() > 5 ? d9d::detail::str_cat(", and ", names.size() - 5, " more)") : ")";
  }
  return note;
}

}  // namespace

Conversion reverse_conversion(const fs::path& src, const std::optional<std::string>& spec_text,
                              const std::string& spec_origin, const Params& params,
                              bool allow_lossy) {
  const fs::path dir = checkpoint_dir(src);
  const fs::path path = dir / kSidecarFileName;
  std::error_code ec;
  D9D_CHECK(fs::exists(path, ec), "--reverse: ", dir.string(), " has no ", kSidecarFileName,
            " (the record `d9d convert` leaves of what it converted), so the original tensor names "
            "and shapes that an inverse needs are unknown. Convert with an explicit inverse spec "
            "instead: d9d convert ",
            src.string(),
            " OUT --spec INVERSE.json (for example examples/specs/fused_to_llama_hf.json)");
  Conversion c;
  c.reverse = true;
  c.sidecar = parse_sidecar(read_text_file(path, "conversion record"), path.string());
  if (spec_text) {
    c.sidecar.spec = *spec_text;
    c.sidecar.spec_origin = spec_origin;
  }
  std::vector<std::string> keys;
  keys.reserve(c.sidecar.source.size());
  for (const auto& [name, spec] : c.sidecar.source) keys.push_back(name);
  const std::string origin = c.sidecar.spec_origin.empty() ? path.string() : c.sidecar.spec_origin;
  mapper::SpecParams given;
  given.values = c.sidecar.params;
  given.lossy_inverse = allow_lossy;
  for (const auto& [name, value] : params) given.values[name] = value;
  try {
    c.mapping = mapper::from_spec(c.sidecar.spec, keys, given);
  } catch (const mapper::SpecError& e) {
    d9d::detail::throw_error<ValueError>("--reverse: ", origin, ": ", e.what());
  } catch (const ValueError& e) {
    d9d::detail::throw_error<ValueError>("--reverse: spec ", origin,
                                         " does not fit the original tensors recorded in ",
                                         path.string(), ": ", e.what());
  }
  try {
    c.mapper = c.mapping.mapper->inverse(c.sidecar.source);
  } catch (const mapper::NotInvertibleError& e) {
    // Lossy casts alone stand in the way when the inverse exists with them undone anyway.
    bool only_lossy_casts = false;
    if (!allow_lossy) {
      given.lossy_inverse = true;
      try {
        (void)mapper::from_spec(c.sidecar.spec, keys, given).mapper->inverse(c.sidecar.source);
        only_lossy_casts = true;
      } catch (const Error&) {
      }
    }
    d9d::detail::throw_error<ValueError>(
        "--reverse: the conversion by spec ", origin, " cannot be undone: ", e.what(),
        only_lossy_casts ? "; pass --allow-lossy to cast back to the recorded dtypes (the values "
                           "the conversion rounded stay rounded), or convert with an explicit "
                           "inverse spec"
                         : "; convert with an explicit inverse spec instead");
  }
  const mapper::SpecDict converted = checkpoint_specs(io::Checkpoint::open(src));
  if (allow_lossy) c.lossy_note = lossy_note(*c.mapper, converted, c.sidecar.source);
  model_state::add_config(c, dir, converted);
  return c;
}

SpecChoice load_spec(const std::string& arg, const fs::path& checkpoint) {
  std::error_code ec;
  if (arg == "auto") {
    const mapper::BuiltinSpec* picked = nullptr;
    try {
      picked = &model_state::builtin_spec_for(checkpoint);
    } catch (const ValueError& e) {
      d9d::detail::throw_error<ValueError>("--spec auto: ", e.what(),
                                           "; pass --spec NAME or --spec FILE.json");
    }
    const mapper::BuiltinSpec& s = *picked;
    return {std::string(s.text), "specs/" + s.name + ".json (built-in)",
            "--spec auto: the built-in spec " + s.name + " (from " +
                (checkpoint_dir(checkpoint) / kConfigFileName).string() + ")"};
  }
  if (fs::exists(arg, ec) || arg.find('/') != std::string::npos ||
      arg.find('.') != std::string::npos) {
    return {read_text_file(arg, "spec"), arg, {}};  // a path: read (or fail naming it)
  }
  if (const mapper::BuiltinSpec* s = mapper::find_builtin_spec(arg)) {
    return {std::string(s->text), "specs/" + s->name + ".json (built-in)", {}};
  }
  d9d::detail::throw_error<ValueError>("--spec ", arg,
                                       ": no such file, and no built-in spec of that name (",
                                       mapper::builtin_specs_list(), ")");
}

// Note [a rank's share]: under `mpirun -np N`, a spec with params tp and tp_rank (the built-in
// *_tp specs) and no --set tp_rank gives each rank its own share: `d9d convert` writes it to
// OUT/rank-0000r/ (rank_dir_name), a whole checkpoint an engine's rank r loads with no further
// slicing, and `d9d load` loads it. tp is N unless --set gives it (then it must be N), tp_rank the
// rank, and ep_rank, where the spec has one and --set does not give it, tp_rank / (tp / ep). Each
// rank reads only its slices (Note [slice pushdown] in the mapper layer's region.cpp).
std::optional<Params> per_rank_params(const std::string& spec_text, const Params& given, int rank,
                                      int size) {
  const std::vector<std::string> declared = mapper::summarize_spec(spec_text).params;
  auto has = [&](const char* name) {
    return std::find(declared.begin(), declared.end(), name) != declared.end();
  };
  if (!has("tp") || !has("tp_rank") || given.contains("tp_rank")) return std::nullopt;
  if (const auto tp = given.find("tp"); tp != given.end()) {
    D9D_CHECK(tp->second == size, "--set tp=", tp->second, " but mpirun started ", size,
              " ranks: each rank takes its own share (tp_rank = its rank)");
  }
  Params mine = given;
  mine["tp"] = size;
  mine["tp_rank"] = rank;
  if (has("ep_rank") && !given.contains("ep_rank")) {
    const auto ep = given.find("ep");
    const int64_t ep_size = ep == given.end() ? 1 : ep->second;  // (the *_tp specs' default)
    D9D_CHECK(ep_size >= 1 && size % ep_size == 0, "ep = ", ep_size,
              " does not divide tp = ", size);
    mine["ep_rank"] = rank / (size / ep_size);
  }
  return mine;
}

std::string rank_dir_name(int rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank-%05d", rank);
  return name;
}

Conversion make_conversion(const fs::path& src, const std::optional<std::string>& spec,
                           bool reverse, const Params& params, bool allow_lossy) {
  std::optional<SpecChoice> choice;
  if (spec) {
    choice = load_spec(*spec, src);
    if (!choice->note.empty()) std::cerr << "d9d: note: " << choice->note << "\n";
  }
  if (reverse) {
    return choice ? reverse_conversion(src, choice->text, choice->origin, params, allow_lossy)
                  : reverse_conversion(src, std::nullopt, {}, params, allow_lossy);
  }
  D9D_CHECK(choice.has_value(), "a spec is needed (--spec S), except with --reverse");
  return forward_conversion(io::Checkpoint::open(src), std::move(choice->text),
                            std::move(choice->origin), params);
}

}  // namespace d9d::cli
