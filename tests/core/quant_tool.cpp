// quant_tool FORMAT DTYPE BLOCK MODE SOURCE SCALE [GLOBAL] OUT: dequantizes raw inputs with
// d9d::dequantize (on the CPU) and writes the raw result to OUT. Used by quant_oracle.py.
//   BLOCK   "br,bc" (fp8_block) or "-"
//   MODE    "multiply", "divide" or "-" (no global scale mode)
//   SOURCE, SCALE, GLOBAL: DTYPE:SHAPE:FILE, SHAPE as "300,500" ("" for 0 dims)
// Errors go to stderr, exit 1.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <d9d/core.hpp>

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, sep)) out.push_back(part);
  if (!s.empty() && s.back() == sep) out.emplace_back();
  return out;
}

d9d::Tensor read_input(const std::string& arg) {
  const std::vector<std::string> parts = split(arg, ':');
  if (parts.size() != 3) throw d9d::ValueError("expected DTYPE:SHAPE:FILE, got " + arg);
  const d9d::DType dtype = d9d::parse_dtype(parts[0]);
  d9d::Shape shape;
  for (const std::string& d : split(parts[1], ',')) {
    if (!d.empty()) shape.push_back(std::stoll(d));
  }
  std::ifstream in(parts[2], std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  d9d::Tensor t = d9d::Tensor::empty(shape, dtype);
  if (static_cast<int64_t>(bytes.size()) != t.nbytes()) {
    throw d9d::ValueError("file " + parts[2] + " does not hold " + t.str());
  }
  if (!bytes.empty()) std::memcpy(t.mutable_data_ptr(), bytes.data(), bytes.size());
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8 && argc != 9) {
    std::fprintf(stderr, "usage: quant_tool FORMAT DTYPE BLOCK MODE SOURCE SCALE [GLOBAL] OUT\n");
    return 2;
  }
  try {
    d9d::Dequantization how;
    const auto format = d9d::quant_format_from_name(argv[1]);
    if (!format) throw d9d::ValueError(std::string("unknown format ") + argv[1]);
    how.format = *format;
    how.dtype = d9d::parse_dtype(argv[2]);
    if (std::string(argv[3]) != "-") {
      const std::vector<std::string> b = split(argv[3], ',');
      how.block_rows = std::stoll(b.at(0));
      how.block_cols = std::stoll(b.at(1));
    }
    if (std::string(argv[4]) != "-")
      how.global_scale_mode = d9d::global_scale_mode_from_name(argv[4]);
    const d9d::Tensor source = read_input(argv[5]);
    const d9d::Tensor scale = read_input(argv[6]);
    const d9d::Tensor global = argc == 9 ? read_input(argv[7]) : d9d::Tensor();
    const d9d::Shape shape = d9d::dequantized_shape(
        how, {source.dtype(), source.shape()}, {scale.dtype(), scale.shape()},
        global.defined() ? std::optional<d9d::QuantizedInput>({global.dtype(), global.shape()})
                         : std::nullopt);
    const d9d::Tensor out = d9d::dequantize(source, scale, how, global);
    if (out.shape() != shape) throw d9d::ValueError("dequantized_shape differs from the result");
    std::ofstream(argv[argc - 1], std::ios::binary)
        .write(static_cast<const char*>(out.data_ptr()),
               static_cast<std::streamsize>(out.nbytes()));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quant_tool: %s\n", e.what());
    return 1;
  }
}
