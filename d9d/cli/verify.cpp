// d9d verify A B [--spec S] [--atol X --rtol Y | --max-ulp N]: tensor-by-tensor comparison of two
// checkpoints, bit for bit (or within a tolerance: Note [verify tolerance]).
//
// A is read as a stream (read_model_state: through the spec when one is given, else through an
// identity), so its side stays within the memory budget; each tensor of B is read in pieces of
// kChunk bytes into one buffer with pread. Memory is therefore bounded by the budget plus one
// chunk, whatever the checkpoints' sizes.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

#include <CLI/CLI.hpp>

#include <d9d/io/file.hpp>
#include <d9d/io/hashes.hpp>
#include <d9d/mapper/adapters.hpp>
#include <d9d/model_state/reader.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

constexpr int64_t kChunk = int64_t{64} << 20;  // a multiple of every element size
constexpr size_t kShownElements = 3;           // differing elements shown per tensor

std::string unravel(int64_t flat, const Shape& shape) {
  if (shape.empty()) return "[]";
  std::vector<int64_t> index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    const int64_t size = shape[d] == 0 ? 1 : shape[d];
    index[d] = flat % size;
    flat /= size;
  }
  std::string out = "[";
  for (size_t d = 0; d < index.size(); ++d) out += (d ? ", " : "") + std::to_string(index[d]);
  return out + "]";
}

// One element as a number and its bits: "0.125 (0x3e00)".
std::string element_string(DType dtype, const std::byte* p) {
  const int64_t size = is_sub_byte(dtype) ? 1 : element_size(dtype);
  std::string hex = "0x";
  char buf[64];
  for (int64_t i = size; i-- > 0;) {  // little-endian bytes, most significant first
    std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(p[i]));
    hex += buf;
  }
  if (is_sub_byte(dtype)) return "byte " + hex;
  Tensor one = Tensor::empty({1}, dtype);
  std::memcpy(one.mutable_data_ptr(), p, static_cast<size_t>(size));
  if (dtype == DType::BOOL) {
    return std::string(one.item<bool>() ? "true" : "false") + " (" + hex + ")";
  } else if (dtype == DType::U64) {
    std::snprintf(buf, sizeof buf, "%" PRIu64, one.item<uint64_t>());
  } else if (is_integral(dtype)) {
    std::snprintf(buf, sizeof buf, "%" PRId64, one.item<int64_t>());
  } else if (dtype == DType::C64) {
    float parts[2];
    std::memcpy(parts, p, sizeof parts);
    std::snprintf(buf, sizeof buf, "%.9g%+.9gi", static_cast<double>(parts[0]),
                  static_cast<double>(parts[1]));
  } else {
    std::snprintf(buf, sizeof buf, "%.9g", one.item<double>());
  }
  return std::string(buf) + " (" + hex + ")";
}

struct Difference {
  std::string name;
  std::string summary;
  std::vector<std::string> elements;
};

// Note [verify tolerance]
// ~~~~~~~~~~~~~~~~~~~~~~~
// Bit for bit is the rule; --atol / --rtol / --max-ulp relax it for floating-point tensors only
// (a lossy round trip: BF16 -> F8 -> BF16), never for integers, bools or packed sub-byte codes,
// and never for dtypes or shapes. An element that differs in its bits passes when A and B are
// both NaN, or both the same infinity, or |A - B| <= atol + rtol * |B| (numpy.isclose, B the
// reference), or their distance in ULPs (how many representable values of the dtype lie between
// them, counting across zero) is at most max_ulp. Values are compared in double, which holds
// every value of every floating dtype d9d reads exactly. The report says how many elements
// differed but passed and the largest |A - B| and ULP distance seen, so "equal within
// tolerance" is never silent about how close.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
  std::optional<int64_t> max_ulp;
  bool any() const { return atol > 0 || rtol > 0 || max_ulp.has_value(); }
};

// Bits of one element (at most 64) as a number ordered like the values it stands for: negative
// values below positive ones, so the difference of two is their distance in ULPs.
int64_t ordered_bits(const std::byte* p, int64_t size) {
  uint64_t bits = 0;
  std::memcpy(&bits, p, static_cast<size_t>(size));  // little-endian
  const int width = static_cast<int>(size * 8);
  const uint64_t sign = uint64_t{1} << (width - 1);
  const auto magnitude = static_cast<int64_t>(bits & (sign - 1));
  return (bits & sign) != 0 ? -magnitude : magnitude;
}

// What the tolerance saw in one tensor.
struct Within {
  int64_t count = 0;  // elements whose bits differ but that pass
  double max_abs = 0;
  uint64_t max_ulp = 0;
};

// |x - y| for two ordered_bits, exact even where the difference overflows int64 (F64 values of
// opposite signs): in unsigned arithmetic the true distance, below 2^64, is what comes out.
uint64_t ulp_distance(int64_t x, int64_t y) {
  return x >= y ? static_cast<uint64_t>(x) - static_cast<uint64_t>(y)
                : static_cast<uint64_t>(y) - static_cast<uint64_t>(x);
}

bool passes(const Tolerance& tol, double a, double b, uint64_t ulps) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  if (std::fabs(a - b) <= tol.atol + tol.rtol * std::fabs(b)) return true;
  return tol.max_ulp && ulps <= static_cast<uint64_t>(*tol.max_ulp);
}

// The elements of `dtype` at `p` (count of them) as doubles, exactly.
std::vector<double> as_doubles(DType dtype, const std::byte* p, int64_t count) {
  const int64_t nbytes = count * element_size(dtype);
  Tensor raw = Tensor::empty({count}, dtype);
  std::memcpy(raw.mutable_data_ptr(), p, static_cast<size_t>(nbytes));
  const Tensor wide = raw.to(DType::F64);
  const auto* d = static_cast<const double*>(wide.data_ptr());
  return std::vector<double>(d, d + count);
}

// Compares `a` (a CPU tensor) with tensor `name` of `b` chunk by chunk; nullopt when equal (bit
// for bit, or within `tol` for a floating-point tensor: Note [verify tolerance], what passed
// added to `within`).
std::optional<Difference> compare(const std::string& name, const Tensor& a_in,
                                  const io::Checkpoint& b, std::byte* buffer, const Tolerance& tol,
                                  Within& within) {
  const io::CheckpointEntry entry = b.entry(name);
  const io::TensorInfo& info = *entry.info;
  const mapper::TensorSpec a_spec = mapper::TensorSpec::of(a_in);
  const mapper::TensorSpec b_spec{info.dtype, info.shape};
  if (!(a_spec == b_spec)) {
    return Difference{name, "A is " + a_spec.str() + ", B is " + b_spec.str(), {}};
  }
  const Tensor a = a_in.device().is_cpu() ? a_in.contiguous() : a_in.to(Device::cpu());
  const auto* a_bytes = static_cast<const std::byte*>(a.data_ptr());
  const io::SafetensorsFile& file = b.file(*entry.file);
  const int64_t nbytes = info.nbytes();
  const int64_t esize = is_sub_byte(info.dtype) ? 1 : element_size(info.dtype);
  const bool tolerant = tol.any() && is_floating_point(info.dtype) && !is_sub_byte(info.dtype);
  int64_t differing = 0;
  Difference diff{name, "", {}};
  for (int64_t off = 0; off < nbytes; off += kChunk) {
    const int64_t len = std::min(kChunk, nbytes - off);
    const io::ReadRange range{&file.mapped_file(),
                              static_cast<uint64_t>(file.data_offset() + info.begin + off), buffer,
                              static_cast<uint64_t>(len)};
    io::read_ranges({&range, 1});  // on d9d::num_threads() threads
    const std::byte* pa = a_bytes + off;
    if (std::memcmp(pa, buffer, static_cast<size_t>(len)) == 0) continue;
    std::vector<double> va, vb;
    if (tolerant) {
      va = as_doubles(info.dtype, pa, len / esize);
      vb = as_doubles(info.dtype, buffer, len / esize);
    }
    for (int64_t i = 0; i < len; i += esize) {
      if (std::memcmp(pa + i, buffer + i, static_cast<size_t>(esize)) == 0) continue;
      if (tolerant) {
        const uint64_t ulps =
            ulp_distance(ordered_bits(pa + i, esize), ordered_bits(buffer + i, esize));
        const double x = va[static_cast<size_t>(i / esize)];
        const double y = vb[static_cast<size_t>(i / esize)];
        if (passes(tol, x, y, ulps)) {
          ++within.count;
          if (!std::isnan(x)) within.max_abs = std::max(within.max_abs, std::fabs(x - y));
          within.max_ulp = std::max(within.max_ulp, ulps);
          continue;
        }
      }
      if (++differing <= static_cast<int64_t>(kShownElements)) {
        const int64_t flat = (off + i) / esize;
        std::string where = is_sub_byte(info.dtype) ? "byte " + std::to_string(flat)
                                                    : unravel(flat, info.shape) + " (element " +
                                                          std::to_string(flat) + ")";
        diff.elements.push_back(where + ": A " + element_string(info.dtype, pa + i) + ", B " +
                                element_string(info.dtype, buffer + i));
      }
    }
  }
  if (differing == 0) return std::nullopt;
  diff.summary = a_spec.str() + ": " + std::to_string(differing) + " of " +
                 std::to_string(nbytes / esize) +
                 (is_sub_byte(info.dtype) ? " bytes differ" : " elements differ") +
                 (tolerant ? " beyond the tolerance" : "");
  return diff;
}

std::string list(const std::vector<std::string>& names, size_t limit = 10) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
  return out;
}

// --sha256: every shard of the checkpoint at `path` (and every other file its d9d-hashes.json
// lists: the index) hashed and checked against its hash list (Note [hash lists] in io's
// hashes.cpp) before any of them is parsed. A mismatch, or a shard with no hash, is an
// IntegrityError naming the file.
void check_hashes(const fs::path& path, bool quiet) {
  const Stopwatch clock;
  // The shards from the index alone: no header is parsed before its bytes are checked.
  io::CheckpointFiles located = io::locate_checkpoint(path);
  const fs::path& dir = located.dir;
  std::vector<std::string>& files = located.files;
  const fs::path list = dir / std::string(io::kHashesFileName);
  std::error_code ec;
  if (fs::exists(list, ec)) {
    for (const auto& [file, digest] :
         io::parse_hashes_json(io::read_regular_file(list), list.string())) {
      if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    }
  }
  std::set<std::string> sources;
  for (const auto& [file, expected] : io::expected_hashes(dir, files)) {
    sources.insert(expected.source);
  }
  const uint64_t bytes = io::verify_hashes(dir, files);
  if (quiet) return;
  std::string from;
  for (const std::string& s : sources) from += (from.empty() ? "" : " and ") + s;
  const double seconds = clock.seconds();
  std::cout << "d9d verify: " << dir.string() << ": "
            << count_of(static_cast<int64_t>(files.size()), "file")
            << (files.size() == 1 ? " matches its" : " match their") << " SHA-256 (from " << from
            << "), " << format_bytes(static_cast<int64_t>(bytes)) << " hashed in "
            << format_seconds(seconds) << ", " << format_rate(static_cast<int64_t>(bytes), seconds)
            << "\n";
}

}  // namespace

VerifyResult run_verify(const VerifyOptions& options) {
  if (options.threads > 0) set_num_threads(options.threads);
  if (options.sha256) {
    check_hashes(options.a, options.quiet);
    if (options.b.empty()) return {};
    check_hashes(options.b, options.quiet);
  }
  const Stopwatch clock;
  const io::Checkpoint b = io::Checkpoint::open(options.b);
  mapper::MapperPtr m;
  std::string through;
  {
    io::Checkpoint a = io::Checkpoint::open(options.a);
    warn_unlisted(a);  // Note [unlisted tensors]
    if (options.spec || options.spec_text) {
      SpecChoice spec = options.spec_text ? SpecChoice{*options.spec_text, options.spec_origin, {}}
                                          : load_spec(*options.spec, options.a);
      if (!spec.note.empty()) std::cerr << "d9d: note: " << spec.note << "\n";
      through = " through " + spec.origin;
      m = forward_conversion(a, std::move(spec.text), std::move(spec.origin), options.params)
              .mapper;
    } else {
      m = mapper::identity_mapper_from_names(a.keys());
    }
  }
  warn_unlisted(b);
  model_state::ReadOptions ro;
  ro.memory_budget = options.memory_budget;
  ro.show_progress = options.show_progress;
  ro.label = "Verifying";
  ro.zero_copy = false;  // A's bytes are read by memcmp: with pread, never through a mapping
  model_state::ModelStateStream stream = model_state::read_model_state(options.a, m, ro);

  VerifyResult result;
  std::set<std::string> a_names;
  const auto planned = stream.planned_specs().value();  // a spec's mapper infers every output
  for (const auto& [name, spec] : planned) {
    a_names.insert(name);
    if (!b.contains(name)) result.only_in_a.push_back(name);
  }
  for (const std::string& key : b.keys()) {
    if (!a_names.contains(key)) result.only_in_b.push_back(key);
  }
  std::sort(result.only_in_a.begin(), result.only_in_a.end());

  const std::unique_ptr<std::byte[]> buffer(new std::byte[static_cast<size_t>(kChunk)]);
  std::vector<Difference> diffs;
  const Tolerance tol{options.atol, options.rtol, options.max_ulp};
  Within within;
  for (auto&& [name, tensor] : stream) {
    if (!b.contains(name)) continue;
    std::optional<Difference> d = compare(name, tensor, b, buffer.get(), tol, within);
    ++result.compared;
    result.bytes += tensor.nbytes();
    if (d) {
      ++result.differing;
      if (diffs.size() < static_cast<size_t>(options.max_shown)) diffs.push_back(std::move(*d));
    }
  }
  result.seconds = clock.seconds();

  result.within_tolerance = within.count;
  const std::string a_desc = options.a.string() + through;
  std::string tolerance_note;
  if (within.count > 0) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "%" PRId64
                  " elements differ within the tolerance (largest "
                  "|A - B| %.6g, %" PRIu64 " ULP)",
                  within.count, within.max_abs, within.max_ulp);
    tolerance_note = buf;
  }
  if (result.equal()) {
    if (!options.quiet) {
      std::cout << "d9d verify: " << a_desc << " and " << options.b.string()
                << (within.count > 0 ? " are equal within the tolerance: " : " are bit-identical: ")
                << result.compared << " tensors, " << format_bytes(result.bytes) << ", "
                << format_seconds(result.seconds) << ", "
                << format_rate(result.bytes, result.seconds) << "\n";
      if (within.count > 0) std::cout << "  " << tolerance_note << "\n";
    }
    return result;
  }
  if (within.count > 0) std::cout << "d9d verify: " << tolerance_note << "\n";
  std::cout << "d9d verify: A = " << a_desc << ", B = " << options.b.string() << "\n";
  if (!result.only_in_a.empty()) {
    std::cout << "  only in A (" << result.only_in_a.size() << "): " << list(result.only_in_a)
              << "\n";
  }
  if (!result.only_in_b.empty()) {
    std::cout << "  only in B (" << result.only_in_b.size() << "): " << list(result.only_in_b)
              << "\n";
  }
  for (const Difference& d : diffs) {
    std::cout << "  " << d.name << ": " << d.summary << "\n";
    for (const std::string& e : d.elements) std::cout << "      " << e << "\n";
  }
  if (result.differing > static_cast<int64_t>(diffs.size())) {
    std::cout << "  ... and " << result.differing - static_cast<int64_t>(diffs.size())
              << " more differing tensors\n";
  }
  std::cout << "d9d verify: " << result.differing << " of " << result.compared
            << " compared tensors differ, " << result.only_in_a.size() << " only in A, "
            << result.only_in_b.size() << " only in B\n";
  return result;
}

Command add_verify(CLI::App& app) {
  auto options = std::make_shared<VerifyOptions>();
  CLI::App* command = app.add_subcommand(
      "verify", "Compare two checkpoints tensor by tensor, bit for bit (exit 1 if they differ)");
  command->add_option("a", options->a, "Checkpoint A")->required();
  command->add_option("b", options->b, "Checkpoint B (not needed with --sha256)");
  command->add_flag("--sha256", options->sha256,
                    "Check every shard of A (and B) against its SHA-256: from the d9d-hashes.json "
                    "d9d convert writes, or the blob names of a Hugging Face hub snapshot (exit 1 "
                    "naming a file that differs or has none); then compare A and B if B is given");
  command->add_option(
      "--spec", options->spec,
      std::string("Convert A through this spec (streamed) before comparing with B. ") + kSpecHelp);
  add_set_option(*command, options->params);
  add_threads_option(*command, options->threads);
  add_size_option(*command, "--memory-budget", options->memory_budget, "Bytes of A read ahead");
  command
      ->add_option("--atol", options->atol,
                   "Floating-point tensors: elements with |A - B| <= atol + rtol * |B| pass")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--rtol", options->rtol, "See --atol")->check(CLI::NonNegativeNumber);
  command
      ->add_option("--max-ulp", options->max_ulp,
                   "Floating-point tensors: elements at most N representable values apart pass")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--max-shown", options->max_shown, "Differing tensors shown in detail")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_progress_flag(*command, options->show_progress);
  return {command, [options] {
            if (options->b.empty() && !options->sha256) {
              return usage_error("verify", "checkpoint B is required (except with --sha256)");
            }
            return run_verify(*options).equal() ? kExitOk : kExitFailure;
          }};
}

}  // namespace d9d::cli
