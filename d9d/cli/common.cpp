// Helpers shared by the commands: sizes, formatting, shared options, the conversion sidecar,
// building mappers.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli.hpp"

#include <d9d/error.hpp>
#include <d9d/io/file.hpp>

namespace d9d::cli {

// ---- sizes and formatting -----------------------------------------------------------------------

int64_t parse_size(std::string_view text) {
  const std::string original(text);
  size_t pos = 0;
  while (pos < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[pos])) != 0 || text[pos] == '.')) {
    ++pos;
  }
  const std::string number(text.substr(0, pos));
  D9D_CHECK(!number.empty() && std::count(number.begin(), number.end(), '.') <= 1 && number != ".",
            "invalid size \"", original, "\": expected a number with an optional unit (500MB, ",
            "1.5GiB, 4096)");
  std::string unit(text.substr(pos));
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  std::transform(unit.begin(), unit.end(), unit.begin(), [](char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  });
  static const std::pair<std::string_view, double> kUnits[] = {{"", 1.0},
                                                               {"b", 1.0},
                                                               {"kb", 1e3},
                                                               {"mb", 1e6},
                                                               {"gb", 1e9},
                                                               {"tb", 1e12},
                                                               {"kib", 1024.0},
                                                               {"mib", 1048576.0},
                                                               {"gib", 1073741824.0},
                                                               {"tib", 1099511627776.0}};
  double scale = 0;
  for (const auto& [name, value] : kUnits) {
    if (unit == name) scale = value;
  }
  D9D_CHECK(scale > 0, "invalid size \"", original, "\": unknown unit \"", text.substr(pos),
            "\" (use B, KB, MB, GB, TB = powers of 1000, or KiB, MiB, GiB, TiB = powers of 1024)");
  const double bytes = std::floor(std::stod(number) * scale);
  D9D_CHECK(bytes >= 0 && bytes < 9.2e18, "invalid size \"", original, "\": out of range");
  return static_cast<int64_t>(bytes);
}

std::string format_bytes(int64_t bytes) {
  static const char* const kUnits[] = {"kB", "MB", "GB", "TB", "PB"};
  if (bytes < 1000) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes) / 1000;  // at least 1 kB
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
  std::ifstream in(path, std::ios::binary);
  D9D_CHECK_AS(io::IoError, in.good(), "cannot read ", what, " ", path.string(), ": ",
               std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  D9D_CHECK_AS(io::IoError, !in.bad(), "cannot read ", what, " ", path.string(), ": ",
               std::strerror(errno));
  return text.str();
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
  return command
      .add_option_function<std::string>(
          name, [&bytes](const std::string& text) { bytes = parse_size(text); }, help)
      ->check(size)
      ->default_str(format_size(bytes));
}

CLI::Option* add_threads_option(CLI::App& command, int& threads) {
  return command
      .add_option("--threads", threads,
                  "Worker threads for reading, copying and casting (0: one per core, or "
                  "$D9D_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);
}

CLI::Option* add_progress_flag(CLI::App& command, bool& show_progress) {
  return command.add_flag("--progress,!--no-progress", show_progress,
                          std::string("Progress bars on standard error, or none (default: ") +
                              (show_progress ? "--progress)" : "--no-progress)"));
}

int usage_error(std::string_view command, std::string_view message) {
  std::cerr << "d9d " << command << ": " << message << "\n"
            << "Run with --help for more information.\n";
  return kExitUsage;
}

// ---- the conversion sidecar ---------------------------------------------------------------------

std::string sidecar_json(const Sidecar& sidecar) {
  nlohmann::ordered_json j;
  j["d9d_conversion"] = 1;
  j["spec"] = sidecar.spec;
  j["spec_origin"] = sidecar.spec_origin;
  nlohmann::ordered_json source = nlohmann::ordered_json::object();
  for (const auto& [name, spec] : sidecar.source) {
    source[name] = nlohmann::ordered_json::array({dtype_name(spec.dtype), spec.shape.vec()});
  }
  j["source"] = std::move(source);
  j["dropped"] = sidecar.dropped;
  return j.dump(1) + "\n";
}

Sidecar parse_sidecar(std::string_view json, std::string_view name) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    d9d::detail::throw_error<ValueError>(name, ": not valid JSON (", e.what(), ")");
  }
  auto fail = [&](const std::string& what) {
    d9d::detail::throw_error<ValueError>(name, ": ", what,
                                         " (is it a d9d-conversion.json written by d9d convert?)");
  };
  if (!j.is_object() || !j.contains("d9d_conversion")) fail("not a d9d conversion record");
  if (j["d9d_conversion"] != 1) fail("unknown version " + j["d9d_conversion"].dump());
  if (!j.contains("spec") || !j["spec"].is_string()) fail("\"spec\" must be a string");
  if (!j.contains("source") || !j["source"].is_object()) fail("\"source\" must be an object");
  Sidecar s;
  s.spec = j["spec"].get<std::string>();
  if (j.contains("spec_origin") && j["spec_origin"].is_string()) {
    s.spec_origin = j["spec_origin"].get<std::string>();
  }
  for (const auto& [key, value] : j["source"].items()) {
    if (!value.is_array() || value.size() != 2 || !value[0].is_string() || !value[1].is_array()) {
      fail("\"source\"[\"" + key + "\"] must be [dtype, shape]");
    }
    const std::optional<DType> dtype = dtype_from_name(value[0].get<std::string>());
    if (!dtype) fail("\"source\"[\"" + key + "\"]: unknown dtype " + value[0].dump());
    Shape shape;
    for (const auto& d : value[1]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        fail("\"source\"[\"" + key + "\"]: bad shape " + value[1].dump());
      }
      shape.push_back(d.get<int64_t>());
    }
    s.source.emplace(key, mapper::TensorSpec{*dtype, shape});
  }
  if (j.contains("dropped") && j["dropped"].is_array()) {
    for (const auto& d : j["dropped"]) {
      if (d.is_string()) s.dropped.push_back(d.get<std::string>());
    }
  }
  return s;
}

void write_sidecar(const fs::path& dir, const Sidecar& sidecar, bool fsync) {
  const std::string text = sidecar_json(sidecar);
  io::AtomicFile file(dir / kSidecarFileName, static_cast<int64_t>(text.size()));
  file.write_at(0, reinterpret_cast<const std::byte*>(text.data()), text.size());
  file.commit(fsync);
}

fs::path checkpoint_dir(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// ---- quantized checkpoints ----------------------------------------------------------------------

std::optional<std::string> read_config_json(const fs::path& dir) {
  const fs::path path = dir / kConfigFileName;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  return read_text_file(path, "model config");
}

std::optional<mapper::QuantizationConfig> quantization_config(const fs::path& dir) {
  const std::optional<std::string> text = read_config_json(dir);
  if (!text) return std::nullopt;
  return mapper::parse_quantization_config(*text, (dir / kConfigFileName).string());
}

mapper::SpecDict checkpoint_specs(const io::Checkpoint& ck) {
  mapper::SpecDict specs;
  for (const std::string& key : ck.keys()) {
    const io::TensorInfo& info = ck.info(key);
    specs.emplace_hint(specs.end(), key, mapper::TensorSpec{info.dtype, info.shape});
  }
  return specs;
}

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

std::string write_config(const fs::path& source_dir, const fs::path& dest, const Conversion& c,
                         const mapper::SpecDict& outputs, bool fsync) {
  const std::optional<std::string> text = read_config_json(source_dir);
  if (!text) return {};
  const std::string origin = (source_dir / kConfigFileName).string();
  std::string out = *text;  // byte for byte, unless its quantization_config changes
  std::string what = "config.json copied";
  bool changed = false;
  if (const auto q = mapper::parse_quantization_config(*text, origin)) {
    const std::vector<mapper::QuantizedPair> kept = mapper::find_quantized_pairs(outputs, q);
    auto j = nlohmann::ordered_json::parse(*text);
    if (kept.empty()) {
      j.erase("quantization_config");
      what += " with its quantization_config removed (no quantized weight is left)";
      changed = true;
    } else {
      // The modules whose weights were dequantized: the outputs of the groups that read a
      // quantized weight and are not quantized weights or scales themselves.
      const std::map<std::string, size_t> packed = quantized_keys(kept);
      std::map<std::string, const mapper::StateGroup*> group_of;
      for (const mapper::StateGroup& g : c.mapper->state_dependency_groups()) {
        for (const std::string& in : g.inputs) group_of.emplace(in, &g);
      }
      std::set<std::string> modules;
      for (const mapper::QuantizedPair& p : c.quantized) {
        auto it = group_of.find(p.weight);
        if (it == group_of.end()) continue;
        for (const std::string& o : it->second->outputs) {
          if (!packed.count(o)) modules.insert(o.substr(0, o.rfind('.')));
        }
      }
      if (!modules.empty()) {
        const char* list = q->quant_method == "compressed-tensors" ? "ignore"
                           : q->quant_method == "modelopt"         ? "exclude_modules"
                                                                   : "modules_to_not_convert";
        nlohmann::ordered_json& config = j["quantization_config"];
        if (!config.contains(list) || !config[list].is_array()) {
          config[list] = nlohmann::ordered_json::array();
        }
        for (const std::string& m : modules) config[list].push_back(m);
        what += " with " + count_of(static_cast<int64_t>(modules.size()), "dequantized module") +
                " added to its quantization_config's \"" + list + "\"";
        changed = true;
      }
    }
    if (changed) out = j.dump(2) + "\n";
  }
  io::AtomicFile file(dest / kConfigFileName, static_cast<int64_t>(out.size()));
  file.write_at(0, reinterpret_cast<const std::byte*>(out.data()), out.size());
  file.commit(fsync);
  return what;
}

// ---- building the mapper ------------------------------------------------------------------------

Conversion forward_conversion(const io::Checkpoint& src, std::string spec_text,
                              std::string spec_origin) {
  Conversion c;
  try {
    c.mapping = mapper::from_spec(spec_text, src.keys());
  } catch (const mapper::SpecError& e) {
    d9d::detail::throw_error<ValueError>(spec_origin, ": ", e.what());
  } catch (const ValueError& e) {
    d9d::detail::throw_error<ValueError>("spec ", spec_origin, " does not fit ", src.dir().string(),
                                         ": ", e.what());
  }
  c.mapper = c.mapping.mapper;
  for (const std::string& key : src.keys()) {
    const io::TensorInfo& info = src.info(key);
    c.sidecar.source.emplace(key, mapper::TensorSpec{info.dtype, info.shape});
  }
  if (c.mapping.unmatched == mapper::UnmatchedPolicy::kDrop) {
    c.sidecar.dropped = c.mapping.unmatched_keys;
  }
  c.sidecar.spec = std::move(spec_text);
  c.sidecar.spec_origin = std::move(spec_origin);
  c.quantization = quantization_config(src.dir());
  c.quantized = mapper::find_quantized_pairs(c.sidecar.source, c.quantization);
  try {
    mapper::check_quantized_pairs(*c.mapper, c.quantized);
  } catch (const ValueError& e) {
    d9d::detail::throw_error<ValueError>("spec ", c.sidecar.spec_origin, " on ", src.dir().string(),
                                         ": ", e.what());
  }
  return c;
}

Conversion reverse_conversion(const fs::path& src, const std::optional<std::string>& spec_text,
                              const std::string& spec_origin) {
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
  try {
    c.mapping = mapper::from_spec(c.sidecar.spec, keys);
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
    d9d::detail::throw_error<ValueError>("--reverse: the conversion by spec ", origin,
                                         " cannot be undone: ", e.what(),
                                         "; convert with an explicit inverse spec instead");
  }
  return c;
}

Conversion make_conversion(const fs::path& src, const std::optional<fs::path>& spec_path,
                           bool reverse) {
  std::optional<std::string> text;
  std::string origin;
  if (spec_path) {
    text = read_text_file(*spec_path, "spec");
    origin = spec_path->string();
  }
  if (reverse) return reverse_conversion(src, text, origin);
  D9D_CHECK(text.has_value(), "a spec is needed (--spec S), except with --reverse");
  return forward_conversion(io::Checkpoint::open(src), std::move(*text), std::move(origin));
}

}  // namespace d9d::cli
