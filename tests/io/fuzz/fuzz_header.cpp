// libFuzzer target: the safetensors header parser + validator, the index parser, and the
// d9d-hashes.json parser.
//
// Beyond "no crash, no sanitizer report", every accepted file is checked against the rules'
// consequences (the ranges tile the data section exactly; every size is consistent), and its
// header, re-planned by the writer, must validate again: reader and writer agree.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/hashes.hpp>
#include <d9d/io/safetensors.hpp>

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

void check_accepted(const d9d::io::SafetensorsHeader& h, size_t file_size) {
  using namespace d9d::io;
  require(h.header_size >= 0 && static_cast<uint64_t>(h.data_offset()) <= file_size);
  int64_t cursor = 0;
  std::vector<TensorDecl> decls;
  for (const auto& [name, info] : h.tensors) {
    require(info.begin == cursor && info.end >= info.begin);
    cursor = info.end;
    decls.push_back({name, info.dtype, info.shape});
  }
  require(static_cast<uint64_t>(h.data_offset() + cursor) == file_size);
  // The writer must accept what the reader accepted, and produce a header the reader accepts.
  const SafetensorsLayout layout = plan_safetensors(decls, h.metadata);
  std::string image = layout.prefix;
  if (layout.file_size - static_cast<int64_t>(image.size()) > (int64_t{1} << 24)) return;
  image.resize(static_cast<size_t>(layout.file_size), '\0');
  const SafetensorsHeader again = validate_safetensors(
      {reinterpret_cast<const std::byte*>(image.data()), image.size()}, "replanned");
  require(again.tensors.size() == h.tensors.size());
  require(again.metadata == h.metadata);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    check_accepted(d9d::io::validate_safetensors(bytes, "fuzz"), size);
  } catch (const d9d::io::FormatError&) {
  }
  // The same bytes as index JSON (skipping the 8-byte prefix when there is one, so the seeds'
  // headers are exercised as JSON too).
  for (const size_t skip : {size_t{0}, size_t{8}}) {
    if (size < skip) break;
    try {
      const auto index = d9d::io::SafetensorsIndex::parse(
          {reinterpret_cast<const char*>(data) + skip, size - skip}, "fuzz");
      for (const auto& [tensor, file] : index.weight_map)
        require(d9d::io::is_plain_file_name(file));
      // What it writes, it reads back the same.
      const auto again = d9d::io::SafetensorsIndex::parse(index.to_json(), "again");
      require(again.weight_map == index.weight_map && again.total_size == index.total_size &&
              again.extra_metadata == index.extra_metadata);
    } catch (const d9d::io::FormatError&) {
    }
    // And as a hash list: what it accepts names plain files with 64-hex digests, and its own
    // text reads back the same.
    try {
      const auto list = d9d::io::parse_hashes_json(
          {reinterpret_cast<const char*>(data) + skip, size - skip}, "fuzz");
      for (const auto& [file, digest] : list) {
        require(d9d::io::is_plain_file_name(file) && digest.size() == 64);
      }
      require(d9d::io::parse_hashes_json(d9d::io::hashes_json(list), "again") == list);
    } catch (const d9d::io::FormatError&) {
    }
  }
  return 0;
}
