// Conversions (see <d9d/model_state/conversion.hpp>): the sidecar, the forward conversion, and a
// single process's conversion.
#include <d9d/model_state/conversion.hpp>

#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>
#include <d9d/mapper/adapters.hpp>
#include <d9d/io/file.hpp>
#include <d9d/mapper/json.hpp>

namespace d9d::model_state {

namespace fs = std::filesystem;

// ---- the conversion sidecar ---------------------------------------------------------------------

std::string sidecar_json(const Sidecar& sidecar) {
  nlohmann::ordered_json j;
  j["d9d_conversion"] = 1;
  j["spec"] = sidecar.spec;
  j["spec_origin"] = sidecar.spec_origin;
  nlohmann::ordered_json source = nlohmann::ordered_json::object();
  // Appended as they come: the names are a std::map's keys, unique and sorted, and ordered_map's
  // own insert searches the keys so far (quadratic: 10 s for 100,000 tensors).
  auto& entries = static_cast<nlohmann::ordered_json::object_t::Container&>(
      source.get_ref<nlohmann::ordered_json::object_t&>());
  entries.reserve(sidecar.source.size());
  for (const auto& [name, spec] : sidecar.source) {
    entries.emplace_back(name,
                         nlohmann::ordered_json::array({dtype_name(spec.dtype), spec.shape.vec()}));
  }
  j["source"] = std::move(source);
  j["dropped"] = sidecar.dropped;
  if (!sidecar.params.empty()) j["params"] = sidecar.params;
  return j.dump(1) + "\n";
}

Sidecar parse_sidecar(std::string_view json, std::string_view name) {
  nlohmann::json j;
  try {
    j = mapper::parse_json(json);
  } catch (const mapper::JsonError& e) {
    d9d::detail::throw_error<ValueError>(name, ": not a valid conversion record: ", e.what());
  }
  auto fail = [&](const std::string& what) {
    d9d::detail::throw_error<ValueError>(name, ": ", what,
                                         " (is it a d9d-conversion.json written by d9d convert?)");
  };
  if (!j.is_object() || !j.contains("d9d_conversion")) fail("not a d9d conversion record");
  if (j["d9d_conversion"] != 1) {
    fail("unknown version " + mapper::json_excerpt(j["d9d_conversion"]));
  }
  if (!j.contains("spec") || !j["spec"].is_string()) fail("\"spec\" must be a string");
  if (!j.contains("source") || !j["source"].is_object()) fail("\"source\" must be an object");
  Sidecar s;
  s.spec = j["spec"].get<std::string>();
  if (j.contains("spec_origin") && j["spec_origin"].is_string()) {
    s.spec_origin = j["spec_origin"].get<std::string>();
  }
  for (const auto& [key, value] : j["source"].items()) {
    const std::string where = "\"source\"[" + mapper::json_string_excerpt(key) + "]";
    if (!value.is_array() || value.size() != 2 || !value[0].is_string() || !value[1].is_array()) {
      fail(where + " must be [dtype, shape]");
    }
    const std::optional<DType> dtype = dtype_from_name(value[0].get<std::string>());
    if (!dtype) fail(where + ": unknown dtype " + mapper::json_excerpt(value[0]));
    Shape shape;
    for (const auto& d : value[1]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        fail(where + ": bad shape " + mapper::json_excerpt(value[1]));
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
  if (j.contains("params")) {
    if (!j["params"].is_object()) fail("\"params\" must be an object");
    for (const auto& [key, value] : j["params"].items()) {
      if (!value.is_number_integer()) fail("\"params\"[\"" + key + "\"] must be an integer");
      s.params.emplace(key, value.get<int64_t>());
    }
  }
  return s;
}

fs::path checkpoint_dir(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

std::string unlisted_note(const io::Checkpoint& checkpoint) {
  const std::map<std::string, std::string>& unlisted = checkpoint.unlisted_tensors();
  if (unlisted.empty()) return "";
  std::string list;
  size_t shown = 0;
  for (const auto& [tensor, file] : unlisted) {
    if (shown++ == 10) {
      list += ", ... (" + std::to_string(unlisted.size() - 10) + " more)";
      break;
    }
    list += (list.empty() ? "" : ", ") + tensor + " (in " + file + ")";
  }
  return d9d::detail::str_cat(unlisted.size(), unlisted.size() == 1 ? " tensor" : " tensors",
                              " in the shards of ", checkpoint.dir().string(),
                              unlisted.size() == 1 ? " is" : " are",
                              " not in its index and left out: ", list);
}

// ---- config.json --------------------------------------------------------------------------------

std::optional<std::string> read_config_json(const fs::path& dir) {
  const fs::path path = dir / kConfigFileName;
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  try {
    return io::read_regular_file(path);  // a FIFO is refused, not waited on
  } catch (const io::IoError& e) {
    d9d::detail::throw_error<io::IoError>("cannot read the model config: ", e.what());
  }
}

const mapper::BuiltinSpec& builtin_spec_for(const fs::path& path) {
  const fs::path dir = checkpoint_dir(path);
  const std::optional<std::string> text = read_config_json(dir);
  D9D_CHECK(text.has_value(), dir.string(), " has no ", kConfigFileName,
            ", which names the model's architecture; name a built-in spec (",
            mapper::builtin_specs_list(), ") or give a spec file");
  return mapper::detect_builtin_spec(*text, (dir / kConfigFileName).string());
}

std::optional<mapper::QuantizationConfig> quantization_config(const fs::path& dir) {
  const std::optional<std::string> text = read_config_json(dir);
  if (!text) return std::nullopt;
  return mapper::parse_quantization_config(*text, (dir / kConfigFileName).string());
}

SpecDict checkpoint_specs(const io::Checkpoint& checkpoint) {
  SpecDict specs;
  for (const std::string& key : checkpoint.keys()) {
    const io::TensorInfo& info = checkpoint.info(key);
    specs.emplace_hint(specs.end(), key, mapper::TensorSpec{info.dtype, info.shape});
  }
  return specs;
}

void add_config(Conversion& c, const fs::path& source_dir, const SpecDict& source_specs) {
  c.config = read_config_json(source_dir);
  c.config_note.clear();
  if (!c.config) return;
  const std::string origin = (source_dir / kConfigFileName).string();
  const std::optional<mapper::QuantizationConfig> q =
      mapper::parse_quantization_config(*c.config, origin);
  c.config_note = "config.json copied";
  if (!q) return;  // byte for byte
  const SpecDict outputs = mapper::infer_all(*c.mapper, source_specs);
  const std::vector<mapper::QuantizedPair> kept = mapper::find_quantized_pairs(outputs, q);
  auto j = nlohmann::ordered_json::parse(*c.config);
  if (kept.empty()) {
    j.erase("quantization_config");
    c.config_note += " with its quantization_config removed (no quantized weight is left)";
  } else {
    // The modules whose weights were dequantized: the outputs of the groups that read a
    // quantized weight and are not quantized weights or scales themselves.
    std::set<std::string> packed;
    for (const mapper::QuantizedPair& p : kept) {
      if (!p.misfit.empty()) continue;
      packed.insert({p.weight, p.scale});
      if (!p.global_scale.empty()) packed.insert(p.global_scale);
    }
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
    if (modules.empty()) return;  // byte for byte
    const char* list = q->quant_method == "compressed-tensors" ? "ignore"
                       : q->quant_method == "modelopt"         ? "exclude_modules"
                                                               : "modules_to_not_convert";
    nlohmann::ordered_json& config = j["quantization_config"];
    if (!config.contains(list) || !config[list].is_array()) {
      config[list] = nlohmann::ordered_json::array();
    }
    for (const std::string& m : modules) config[list].push_back(m);
    c.config_note += d9d::detail::str_cat(" with ", modules.size(),
                                          modules.size() == 1 ? " dequantized module" :
                                                                " dequantized modules",
                                          " added to its quantization_config's \"", list, "\"");
  }
  c.config = j.dump(2) + "\n";
}

// ---- converting ---------------------------------------------------------------------------------

Conversion forward_conversion(const io::Checkpoint& src, std::string spec_text,
                              std::string spec_origin,
                              const std::map<std::string, int64_t>& params) {
  Conversion c;
  mapper::SpecParams given;
  given.values = params;
  given.config_json = read_config_json(src.dir());
  given.config_origin = (src.dir() / kConfigFileName).string();
  try {
    c.mapping = mapper::from_spec(spec_text, src.keys(), given);
  } catch (const mapper::SpecError& e) {
    d9d::detail::throw_error<ValueError>(spec_origin, ": ", e.what());
  } catch (const ValueError& e) {
    d9d::detail::throw_error<ValueError>("spec ", spec_origin, " does not fit ", src.dir().string(),
                                         ": ", e.what());
  }
  c.mapper = c.mapping.mapper;
  c.unlisted = unlisted_note(src);  // Note [unlisted tensors]
  D9D_CHECK(c.unlisted.empty() || c.mapping.unmatched != mapper::UnmatchedPolicy::kError,
            spec_origin, ": ", c.unlisted, "; the spec says \"unmatched\": \"error\"");
  for (const std::string& key : src.keys()) {
    const io::TensorInfo& info = src.info(key);
    c.sidecar.source.emplace(key, mapper::TensorSpec{info.dtype, info.shape});
  }
  if (c.mapping.unmatched == mapper::UnmatchedPolicy::kDrop) {
    c.sidecar.dropped = c.mapping.unmatched_keys;
  }
  for (const auto& [name, p] : c.mapping.params) c.sidecar.params.emplace(name, p.value);
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
  add_config(c, src.dir(), c.sidecar.source);
  return c;
}

WriteOptions conversion_write_options(const Conversion& c, WriteOptions options) {
  options.companion_files[std::string(kSidecarFileName)] =
      c.reverse ? std::nullopt : std::optional<std::string>(sidecar_json(c.sidecar));
  if (c.config) options.companion_files[std::string(kConfigFileName)] = c.config;
  return options;
}

void check_destination_is_not_source(const fs::path& src, const fs::path& dest_dir) {
  std::error_code ec;
  if (fs::exists(dest_dir, ec) && fs::exists(src, ec)) {
    D9D_CHECK(!fs::equivalent(checkpoint_dir(src), dest_dir, ec), "convert: the destination ",
              dest_dir.string(), " is the source checkpoint's directory; write elsewhere");
  }
}

CreatedDirGuard::CreatedDirGuard(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  created_ = !fs::exists(dir_, ec);
}

CreatedDirGuard::~CreatedDirGuard() {
  if (!created_ || done_) return;
  std::error_code ec;
  if (fs::is_directory(dir_, ec) && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
}

ReadPlan convert_model_state_local(const fs::path& src, const fs::path& dest_dir,
                                   const Conversion& c, const ReadOptions& read_options,
                                   const WriteOptions& write_options) {
  check_destination_is_not_source(src, dest_dir);
  ModelStateStream stream = read_model_state(src, c.mapper, read_options);
  CreatedDirGuard guard(dest_dir);  // outlives the destination's lock file
  write_model_state_local(dest_dir, mapper::identity_mapper_from_mapper_outputs(c.mapper), stream,
                          conversion_write_options(c, write_options));
  guard.done();
  return stream.plan();
}

}  // namespace d9d::model_state
