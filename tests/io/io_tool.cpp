// A command-line driver of the io layer for the Python interop and differential tests.
//
//   io_tool validate FILE          exit 0 if FILE is a valid safetensors file, 1 (FormatError) or
//                                  3 (IoError) with the message on stderr
//   io_tool dump FILE              the file as JSON: metadata, and per tensor (file order) name,
//                                  dtype, shape, data_offsets and the bytes in hex
//   io_tool copy IN OUT [ALIGN]    load every tensor of IN and save them to OUT with IN's metadata
//   io_tool transpose IN OUT       save every tensor of IN with 2+ dims as its transpose(0, 1)
//                                  view (a strided source), the others as they are
//   io_tool ckpt PATH              the checkpoint (directory, index or file) as JSON, sorted
//   io_tool check FILE...          one line per file: "OK <json>" (metadata, data_offset and per
//                                  tensor name, dtype, shape, data_offsets) or "REJECT <message>"
#include <cstdio>
#include <iostream>
#include <string>

#include <d9d/io/checkpoint.hpp>
#include <d9d/io/safetensors.hpp>

namespace {

using namespace d9d;
using namespace d9d::io;

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string hex(const Tensor& t) {
  static const char* digits = "0123456789abcdef";
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  std::string out;
  out.reserve(static_cast<size_t>(c.nbytes()) * 2);
  for (int64_t i = 0; i < c.nbytes(); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

std::string tensor_json(const std::string& name, const TensorInfo& info, const Tensor& t,
                        const std::string& extra) {
  std::string out = "{\"name\": " + json_string(name) + ", \"dtype\": \"" +
                    std::string(dtype_name(info.dtype)) + "\", \"shape\": [";
  for (size_t i = 0; i < info.shape.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(info.shape[i]);
  }
  out += "], \"data_offsets\": [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
         "], \"hex\": \"" + hex(t) + "\"" + extra + "}";
  return out;
}

std::string metadata_json(const Metadata& metadata) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : metadata) {
    out += (first ? "" : ", ") + json_string(k) + ": " + json_string(v);
    first = false;
  }
  return out + "}";
}

int dump(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::string out = "{\"metadata\": " + metadata_json(f.metadata()) +
                    ", \"data_offset\": " + std::to_string(f.data_offset()) + ", \"tensors\": [";
  bool first = true;
  for (const std::string& name : f.keys()) {
    out += (first ? "" : ", ") + tensor_json(name, f.info(name), f.tensor(name), "");
    first = false;
  }
  std::cout << out << "]}\n";
  return 0;
}

int copy(const std::string& in, const std::string& out, int64_t alignment, bool transpose) {
  const SafetensorsFile f = SafetensorsFile::open(in);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : f.keys()) {
    Tensor t = transpose ? f.tensor(name) : f.load(name);
    if (transpose && t.dim() >= 2) t = t.transpose(0, 1);
    tensors.emplace_back(name, t);
  }
  save_safetensors(out, tensors, f.metadata(), {.alignment = alignment});
  return 0;
}

int ckpt(const std::string& path) {
  const Checkpoint c = Checkpoint::open(path);
  const auto all = c.load_all();
  std::string out = "{\"tensors\": [";
  bool first = true;
  for (const std::string& name : c.keys()) {
    out += (first ? "" : ", ") + tensor_json(name, c.info(name), all.at(name),
                                             ", \"file\": " + json_string(*c.entry(name).file));
    first = false;
  }
  std::cout << out << "]}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 2 && args[0] == "validate") {
      d9d::io::SafetensorsFile::open(args[1]);
      return 0;
    }
    if (args.size() == 2 && args[0] == "dump") return dump(args[1]);
    if ((args.size() == 3 || args.size() == 4) && args[0] == "copy") {
      return copy(args[1], args[2], args.size() == 4 ? std::stoll(args[3]) : 8, false);
    }
    if (args.size() == 3 && args[0] == "transpose") return copy(args[1], args[2], 8, true);
    if (args.size() == 2 && args[0] == "ckpt") return ckpt(args[1]);
    if (args.size() >= 2 && args[0] == "check") {
      for (size_t i = 1; i < args.size(); ++i) {
        try {
          const auto f = d9d::io::SafetensorsFile::open(args[i]);
          std::string out = "{\"metadata\": " + metadata_json(f.metadata()) +
                            ", \"data_offset\": " + std::to_string(f.data_offset()) +
                            ", \"tensors\": [";
          for (size_t k = 0; k < f.keys().size(); ++k) {
            const auto& info = f.info(f.keys()[k]);
            out += (k ? ", [" : "[") + json_string(f.keys()[k]) + ", \"" +
                   std::string(d9d::dtype_name(info.dtype)) + "\", [";
            for (size_t d = 0; d < info.shape.size(); ++d) {
              out += (d ? ", " : "") + std::to_string(info.shape[d]);
            }
            out += "], " + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
          }
          std::cout << "OK " << out << "]}\n";
        } catch (const d9d::io::FormatError& e) {
          std::string msg = e.what();
          for (char& c : msg) c = c == '\n' ? ' ' : c;
          std::cout << "REJECT " << msg << "\n";
        }
      }
      return 0;
    }
  } catch (const d9d::io::FormatError& e) {
    std::cerr << e.what() << "\n";
    return 1;
  } catch (const d9d::io::IoError& e) {
    std::cerr << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  }
  std::cerr << "usage: io_tool validate|dump FILE | copy IN OUT [ALIGN] | transpose IN OUT | "
               "ckpt PATH\n";
  return 2;
}
