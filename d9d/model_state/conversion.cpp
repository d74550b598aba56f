// Conversions (see <d9d/model_state/conversion.hpp>): the sidecar, the forward conversion, and a
// single process's conversion.
#include <d9d/model_state/conversion.hpp>

#include <fstream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include <d9d/error.hpp>
#include <d9d/io/file.hpp>
#include <d9d/mapper/adapters.hpp>

namespace d9d::model_state {

namespace fs = std::filesystem;

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
  if (!sidecar.params.empty()) j["params"] = sidecar.params;
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
  if (j.contains("params")) {
    if (!j["params"].is_object()) fail("\"params\" must be an object");
    for (const auto& [key, value] : j["params"].items()) {
      if (!value.is_number_integer()) fail("\"params\"[\"" + key + "\"] must be an integer");
      s.params.emplace(key, value.get<int64_t>());
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

// ---- converting ---------------------------------------------------------------------------------

std::optional<std::string> read_config_json(const fs::path& dir) {
  const fs::path path = dir / kConfigFileName;
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  D9D_CHECK_AS(io::IoError, in.good() || in.eof(), "cannot read ", path.string());
  return text.str();
}

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
  return c;
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
  CreatedDirGuard guard(dest_dir);
  // write_model_state_local, spelled out so that the record of an earlier conversion goes just
  // before the new checkpoint replaces the old one (Note [conversion sidecar]).
  prepare_destination(dest_dir, write_options);
  {
    ShardWriter writer(dest_dir, mapper::identity_mapper_from_mapper_outputs(c.mapper),
                       write_options);
    if (const auto specs = stream.planned_specs()) writer.plan(*specs);
    for (auto&& [name, tensor] : stream) writer.add(name, tensor);
    const LocalShards shards = writer.finish();
    std::error_code ec;
    fs::remove(dest_dir / kSidecarFileName, ec);
    finalize_checkpoint(dest_dir, {&shards, 1}, write_options);
  }
  if (!c.reverse) write_sidecar(dest_dir, c.sidecar, write_options.fsync);
  guard.done();
  return stream.plan();
}

}  // namespace d9d::model_state
