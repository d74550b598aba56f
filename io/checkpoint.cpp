// SafetensorsIndex and Checkpoint.
#include <d9d/io/checkpoint.hpp>

#include <algorithm>
#include <cstdio>
#include <set>
#include <unordered_map>

#include <d9d/io/file.hpp>

#include "json.hpp"

namespace d9d::io {
namespace {

const char* index_rule_text(int rule) {
  switch (rule) {
    case 1:
      return "the index is one UTF-8 JSON object without duplicate keys";
    case 2:
      return "weight_map is an object of file names";
    case 3:
      return "a file name is a plain name in the checkpoint directory";
    case 4:
      return "metadata is an object with an integer total_size";
    default:
      return "";
  }
}

[[noreturn]] void index_fail(std::string_view file, std::string_view where, const std::string& what,
                             int rule) {
  d9d::detail::throw_error<FormatError>(file, ": ", where, ": ", what, " (index rule ", rule, ": ",
                                        index_rule_text(rule), ")");
}

}  // namespace

std::string shard_file_name(int index, int count) {
  D9D_CHECK(count >= 1 && index >= 0 && index < count && count <= kMaxShardCount,
            "shard_file_name: shard ", index, " of ", count, " is out of range");
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", index + 1, count);
  return buf;
}

bool is_plain_file_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  return name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

SafetensorsIndex SafetensorsIndex::parse(std::string_view json, std::string_view name) {
  if (const size_t bad = detail::find_invalid_utf8(json); bad != std::string_view::npos) {
    index_fail(name, "byte " + std::to_string(bad), "invalid UTF-8", 1);
  }
  SafetensorsIndex index;
  detail::JsonCursor cur(json);
  bool seen_weight_map = false;
  try {
    cur.expect('{', "a JSON object");
    std::set<std::string> top_keys;
    std::string scratch, scratch2;
    if (!cur.consume('}')) {
      do {
        cur.skip_ws();
        const size_t key_pos = cur.pos();
        const std::string key(cur.string(scratch));
        if (!top_keys.insert(key).second) {
          cur.fail_at(key_pos, "duplicate key " + detail::quote_name(key));
        }
        cur.expect(':', "':' after a key");
        if (key == "weight_map") {
          seen_weight_map = true;
          if (cur.peek() != '{') {
            index_fail(name, "weight_map", "expected an object, found " + cur.describe_next(), 2);
          }
          cur.expect('{', "'{'");
          if (!cur.consume('}')) {
            do {
              cur.skip_ws();
              const std::string tensor(cur.string(scratch));
              cur.expect(':', "':' after a key");
              const std::string where = "weight_map[" + detail::quote_name(tensor) + "]";
              if (cur.peek() != '"') {
                index_fail(name, where, cur.describe_next() + " is not a file name string", 2);
              }
              std::string file(cur.string(scratch2));
              if (!is_plain_file_name(file)) {
                index_fail(name, where,
                           "file name " + detail::quote_name(file) +
                               " is not a plain name in the checkpoint directory",
                           3);
              }
              if (!index.weight_map.emplace(tensor, std::move(file)).second) {
                index_fail(name, where, "the tensor appears twice", 1);
              }
            } while (cur.consume(','));
            cur.expect('}', "',' or '}' in weight_map");
          }
        } else if (key == "metadata") {
          if (cur.peek() != '{') {
            index_fail(name, "metadata", "expected an object, found " + cur.describe_next(), 4);
          }
          cur.expect('{', "'{'");
          std::set<std::string> meta_keys;
          if (!cur.consume('}')) {
            do {
              cur.skip_ws();
              const size_t pos = cur.pos();
              const std::string mkey(cur.string(scratch));
              if (!meta_keys.insert(mkey).second) {
                cur.fail_at(pos, "duplicate key " + detail::quote_name(mkey));
              }
              cur.expect(':', "':' after a key");
              if (mkey == "total_size") {
                const char c = cur.peek();
                if (c != '-' && (c < '0' || c > '9')) {
                  index_fail(name, "metadata.total_size",
                             cur.describe_next() + " is not an integer", 4);
                }
                const detail::JsonNumber num = cur.number();
                if (num.negative || !num.integer || num.too_large) {
                  index_fail(name, "metadata.total_size",
                             std::string(num.text) + " is not an integer in [0, 2^63 - 1]", 4);
                }
                index.total_size = static_cast<int64_t>(num.value);
              } else {
                index.extra_metadata.emplace(mkey, std::string(cur.skip_value(1)));
              }
            } while (cur.consume(','));
            cur.expect('}', "',' or '}' in metadata");
          }
        } else {
          cur.skip_value(1);
        }
      } while (cur.consume(','));
      cur.expect('}', "',' or '}'");
    }
    cur.skip_ws();
    if (!cur.at_end()) cur.fail("trailing bytes after the JSON object");
  } catch (const detail::JsonSyntaxError& e) {
    index_fail(name, "byte " + std::to_string(e.pos), e.message, 1);
  }
  if (!seen_weight_map) index_fail(name, "weight_map", "the key is missing", 2);
  return index;
}

void SafetensorsIndex::add_shard(const std::string& file, const SafetensorsHeader& header) {
  D9D_CHECK(is_plain_file_name(file), "SafetensorsIndex::add_shard: ", detail::quote_name(file),
            " is not a plain file name");
  for (const auto& [tensor, info] : header.tensors) {  // check all first: a failure changes nothing
    const auto it = weight_map.find(tensor);
    D9D_CHECK(it == weight_map.end(), "SafetensorsIndex::add_shard: tensor ",
              detail::quote_name(tensor), " of shard ", detail::quote_name(file),
              " is already in shard ", detail::quote_name(it->second));
  }
  int64_t bytes = total_size.value_or(0);
  for (const auto& [tensor, info] : header.tensors) {
    weight_map.emplace(tensor, file);
    bytes += info.nbytes();
  }
  total_size = bytes;
}

SafetensorsIndex SafetensorsIndex::read(const std::filesystem::path& path) {
  return parse(read_regular_file(path), path.string());
}

std::string SafetensorsIndex::to_json() const {
  std::string out = "{\n  \"metadata\": {";
  bool first = true;
  std::map<std::string, std::string> meta = extra_metadata;
  if (total_size) meta["total_size"] = std::to_string(*total_size);
  for (const auto& [key, raw] : meta) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    detail::append_json_string(out, key);
    out += ": ";
    out += raw;
  }
  out += first ? "},\n" : "\n  },\n";
  out += "  \"weight_map\": {";
  first = true;
  for (const auto& [tensor, file] : weight_map) {
    out += first ? "\n    " : ",\n    ";
    first = false;
    detail::append_json_string(out, tensor);
    out += ": ";
    detail::append_json_string(out, file);
  }
  out += first ? "}\n}\n" : "\n  }\n}\n";
  return out;
}

void SafetensorsIndex::write(const std::filesystem::path& path, bool fsync) const {
  for (const auto& [tensor, file] : weight_map) {
    D9D_CHECK(is_plain_file_name(file), "SafetensorsIndex::write ", path.string(), ": tensor ",
              detail::quote_name(tensor), " maps to ", detail::quote_name(file),
              ", which is not a plain file name");
  }
  const std::string text = to_json();
  AtomicFile out(path, static_cast<int64_t>(text.size()));
  out.write_at(0, reinterpret_cast<const std::byte*>(text.data()), text.size());
  out.commit(fsync);
}

std::vector<std::string> SafetensorsIndex::files() const {
  std::set<std::string> names;
  for (const auto& [tensor, file] : weight_map) names.insert(file);
  return {names.begin(), names.end()};
}

// ---- Checkpoint ---------------------------------------------------------------------------------

struct Checkpoint::Impl {
  std::filesystem::path dir;
  std::optional<SafetensorsIndex> index;
  std::vector<std::string> files;
  std::vector<SafetensorsFile> opened;  // parallel to `files`
  std::vector<std::string> keys;
  std::unordered_map<std::string_view, std::pair<uint32_t, const TensorInfo*>> where;
  int64_t total_bytes = 0;
  std::map<std::string, std::string> unlisted;

  std::pair<uint32_t, const TensorInfo*> find(std::string_view name) const {
    const auto it = where.find(name);
    if (it == where.end()) {
      d9d::detail::throw_error<ValueError>("checkpoint ", dir.string(), ": no tensor named ",
                                           detail::quote_name(name), " (it has ", keys.size(),
                                           " tensors)");
    }
    return it->second;
  }
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

CheckpointFiles locate_checkpoint(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  CheckpointFiles located;
  fs::path single_path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    located.dir = path;
    const fs::path idx = path / kIndexFileName;
    const fs::path single = path / kSingleFileName;
    if (fs::exists(idx, ec)) {
      located.index_path = idx;
    } else if (fs::exists(single, ec)) {
      single_path = single;
    } else {
      d9d::detail::throw_error<IoError>("checkpoint ", path.string(), ": neither ", kIndexFileName,
                                        " nor ", kSingleFileName, " is in the directory");
    }
  } else {
    located.dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (path.extension() == ".json") {
      located.index_path = path;
    } else {
      single_path = path;
    }
  }

  if (!located.index_path.empty()) {
    located.index = SafetensorsIndex::read(located.index_path);
    located.files = located.index->files();
    const fs::path single = located.dir / kSingleFileName;
    const bool single_named = std::find(located.files.begin(), located.files.end(),
                                        kSingleFileName) != located.files.end();
    if (!single_named && fs::exists(single, ec)) {
      d9d::detail::throw_error<FormatError>(
          "checkpoint ", located.dir.string(), ": both ", kIndexFileName, " and ", kSingleFileName,
          " are present and the index does not name ", kSingleFileName,
          "; which one is the checkpoint is ambiguous (remove one)");
    }
  } else {
    located.files = {single_path.filename().string()};
  }
  return located;
}

Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  CheckpointFiles located = locate_checkpoint(path);
  impl->dir = std::move(located.dir);
  impl->index = std::move(located.index);
  impl->files = std::move(located.files);
  const std::filesystem::path& index_path = located.index_path;
  impl->opened.reserve(impl->files.size());
  for (const std::string& file : impl->files) {
    impl->opened.push_back(SafetensorsFile::open(impl->dir / file));
  }

  if (impl->index) {
    // Every tensor of every shard: a tensor in two shards is an error (which copy is meant cannot
    // be told), one the index does not list is left out and kept aside.
    std::unordered_map<std::string_view, uint32_t> holder;
    for (uint32_t f = 0; f < impl->files.size(); ++f) {
      for (const std::string& tensor : impl->opened[f].keys()) {
        const auto [it, fresh] = holder.emplace(tensor, f);
        if (!fresh) {
          d9d::detail::throw_error<FormatError>(
              "checkpoint ", impl->dir.string(), ": tensor ", detail::quote_name(tensor),
              " is in two shards, ", detail::quote_name(impl->files[it->second]), " and ",
              detail::quote_name(impl->files[f]), "; a checkpoint holds each tensor once");
        }
      }
    }
    impl->keys.reserve(impl->index->weight_map.size());
    impl->where.reserve(impl->index->weight_map.size());
    for (const auto& [tensor, file] : impl->index->weight_map) {
      const auto it = holder.find(tensor);
      if (it == holder.end() || impl->files[it->second] != file) {
        const auto f = std::lower_bound(impl->files.begin(), impl->files.end(), file);
        d9d::detail::throw_error<FormatError>(
            index_path.string(), ": weight_map[", detail::quote_name(tensor),
            "]: the index puts it in ", detail::quote_name(file), ", which has no such tensor (",
            impl->opened[static_cast<size_t>(f - impl->files.begin())].size(), " tensors)");
      }
      impl->keys.push_back(tensor);  // weight_map is a std::map: already sorted
    }
    if (holder.size() > impl->index->weight_map.size()) {  // each listed one was found above
      for (const auto& [tensor, f] : holder) {
        if (!impl->index->weight_map.contains(std::string(tensor))) {
          impl->unlisted.emplace(tensor, impl->files[f]);
        }
      }
    }
  } else {
    impl->keys = impl->opened[0].sorted_keys();
  }
  for (const std::string& key : impl->keys) {
    uint32_t f = 0;
    if (impl->index) {
      const std::string& file = impl->index->weight_map.at(key);
      f = static_cast<uint32_t>(std::lower_bound(impl->files.begin(), impl->files.end(), file) -
                                impl->files.begin());
    }
    const TensorInfo* info = &impl->opened[f].info(key);
    impl->where.emplace(key, std::make_pair(f, info));
    impl->total_bytes += info->nbytes();
  }
  return Checkpoint(std::move(impl));
}

const std::filesystem::path& Checkpoint::dir() const {
  return impl_->dir;
}
const std::optional<SafetensorsIndex>& Checkpoint::index() const {
  return impl_->index;
}
const std::vector<std::string>& Checkpoint::keys() const {
  return impl_->keys;
}
bool Checkpoint::contains(std::string_view name) const {
  return impl_->where.find(name) != impl_->where.end();
}
CheckpointEntry Checkpoint::entry(std::string_view name) const {
  const auto [f, info] = impl_->find(name);
  return {&impl_->files[f], info};
}
const std::vector<std::string>& Checkpoint::files() const {
  return impl_->files;
}
const SafetensorsFile& Checkpoint::file(std::string_view file_name) const {
  const auto it = std::lower_bound(impl_->files.begin(), impl_->files.end(), file_name);
  D9D_CHECK(it != impl_->files.end() && *it == file_name, "checkpoint ", impl_->dir.string(),
            ": no file named ", detail::quote_name(file_name));
  return impl_->opened[static_cast<size_t>(it - impl_->files.begin())];
}
int64_t Checkpoint::total_bytes() const {
  return impl_->total_bytes;
}
const std::map<std::string, std::string>& Checkpoint::unlisted_tensors() const {
  return impl_->unlisted;
}

Tensor Checkpoint::tensor(std::string_view name) const {
  return impl_->opened[impl_->find(name).first].tensor(name);
}
Tensor Checkpoint::load(std::string_view name) const {
  return impl_->opened[impl_->find(name).first].load(name);
}
void Checkpoint::read_into(std::string_view name, const Tensor& dst) const {
  impl_->opened[impl_->find(name).first].read_into(name, dst);
}

namespace {

void sort_by_file_offset(std::vector<ReadRange>& ranges) {
  // File order makes neighbouring tensors neighbouring reads, which preadv joins.
  std::sort(ranges.begin(), ranges.end(), [](const ReadRange& a, const ReadRange& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  });
}

}  // namespace

void Checkpoint::read_into(const std::map<std::string, Tensor>& targets,
                           const ReadRangesOptions& options) const {
  std::vector<ReadRange> ranges;
  ranges.reserve(targets.size());
  for (const auto& [name, dst] : targets) {
    const auto [f, info] = impl_->find(name);
    const SafetensorsFile& file = impl_->opened[f];
    if (!dst.defined() || !dst.device().is_cpu() || !dst.is_contiguous() ||
        dst.dtype() != info->dtype || dst.shape() != info->shape) {
      file.read_into(name, dst);  // checks and reports, or copies into a strided / device target
      continue;
    }
    ranges.push_back({&file.mapped_file(), static_cast<uint64_t>(file.data_offset() + info->begin),
                      static_cast<std::byte*>(dst.mutable_data_ptr()),
                      static_cast<uint64_t>(info->nbytes())});
  }
  sort_by_file_offset(ranges);
  read_ranges(ranges, options);
}

std::map<std::string, Tensor> Checkpoint::load(const std::vector<std::string>& names,
                                               const ReadRangesOptions& options) const {
  std::map<std::string, Tensor> out;
  std::vector<ReadRange> ranges;
  ranges.reserve(names.size());
  for (const std::string& name : names) {
    const auto [f, info] = impl_->find(name);
    const auto [slot, inserted] = out.try_emplace(name);
    if (!inserted) continue;  // a name asked for twice is read once
    const SafetensorsFile& file = impl_->opened[f];
    slot->second = Tensor::from_storage(Storage::allocate(static_cast<size_t>(info->nbytes())),
                                        info->dtype, info->shape);
    ranges.push_back({&file.mapped_file(), static_cast<uint64_t>(file.data_offset() + info->begin),
                      static_cast<std::byte*>(slot->second.mutable_data_ptr()),
                      static_cast<uint64_t>(info->nbytes()), /*populate=*/true});
  }
  sort_by_file_offset(ranges);
  read_ranges(ranges, options);
  return out;
}

}  // namespace d9d::io
