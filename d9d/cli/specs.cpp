// d9d specs [NAME] [--json]: the built-in spec library (<d9d/mapper/builtin_specs.hpp>): what
// each spec is for and what it does, or one spec's text, to read or to start a spec file from.
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <d9d/mapper/builtin_specs.hpp>

#include "cli.hpp"

namespace d9d::cli {

namespace {

struct SpecsOptions {
  std::optional<std::string> name;
  bool json = false;
};

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// `text` wrapped at `width` columns, each line after the first indented by `indent`.
std::string wrapped(const std::string& text, size_t indent, size_t width) {
  std::string out, line;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    const std::string word = text.substr(start, end - start);
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      out += line + "\n" + std::string(indent, ' ');
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
    start = end + 1;
  }
  return out + line;
}

int run_specs(const SpecsOptions& o) {
  const auto& specs = mapper::builtin_specs();
  if (o.name) {
    const mapper::BuiltinSpec* s = mapper::find_builtin_spec(*o.name);
    if (s == nullptr) {
      std::cerr << "d9d: error: no built-in spec " << *o.name << " (there are "
                << mapper::builtin_specs_list() << ")\n";
      return kExitFailure;
    }
    if (o.json) {
      std::cout << s->text;
      return kExitOk;
    }
    std::cout << s->name << ": " << wrapped(s->description, 2, 100) << "\n\n" << s->text;
    return kExitOk;
  }
  if (o.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const mapper::BuiltinSpec& s : specs) {
      out.push_back({{"name", s.name},
                     {"model_type", s.model_types},
                     {"architectures", s.architectures},
                     {"description", s.description}});
    }
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  for (const mapper::BuiltinSpec& s : specs) {
    std::cout << s.name << "\n  for: model_type " << joined(s.model_types) << "; "
              << joined(s.architectures) << "\n  " << wrapped(s.description, 2, 100) << "\n\n";
  }
  std::cout << "d9d convert CKPT OUT --spec auto picks by CKPT/config.json's model_type (then its "
               "architectures);\n--spec NAME picks by name; `d9d specs NAME` prints a spec. The "
               "engine layout they\nall write is in specs/README.md.\n";
  return kExitOk;
}

}  // namespace

Command add_specs(CLI::App& app) {
  auto options = std::make_shared<SpecsOptions>();
  CLI::App* command = app.add_subcommand(
      "specs", "The built-in specs (--spec NAME, --spec auto): what each is for and does");
  command->add_option("name", options->name, "Print this spec's text");
  command->add_flag("--json", options->json,
                    "The list as JSON (name, model_type, architectures, description), or with "
                    "NAME the spec alone");
  command->footer(kExitStatusHelp);
  return {command, [options] { return run_specs(*options); }};
}

}  // namespace d9d::cli
