// d9d: inspect, plan, convert, verify and load safetensors checkpoints; `d9d demo` shows it all.
//
// Exit status: 0 ok, 1 failure (an error, or verify/plan/demo answering "no"), 2 usage error.
// Errors print as "d9d: error: <message>" on standard error.
//
// Under `mpirun -np N` (N > 1) only `convert` runs, on every rank (Note [distributed conversion]);
// rank 0 alone prints. `load` runs too with a tensor-parallel spec, each rank loading its share
// and printing its own report (Note [a rank's share] in common.cpp). An error every rank agreed on
// ends every rank with status 1; an error only this rank knows about ends the whole job (Note
// [bounded failure]), so no rank waits for it.
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <d9d/dist/process_group.hpp>
#include <d9d/error.hpp>
#include <d9d/version.hpp>

#include "cli.hpp"

int main(int argc, char** argv) {
  using namespace d9d::cli;
  CLI::App app{
      "d9d: streamed, declarative transformation of safetensors checkpoints.\n"
      "Start with `d9d demo`; `d9d specs` lists the built-in specs (--spec auto picks one)."};
  app.footer(kExitStatusHelp);  // each command's; those that take sizes add kSizesHelp
  app.set_version_flag("--version", std::string("d9d ") + d9d::version());
  app.require_subcommand(1);
  const std::vector<Command> commands{add_inspect(app), add_plan(app), add_convert(app),
                                      add_verify(app),  add_load(app), add_demo(app),
                                      add_specs(app)};
  app.footer(std::string(kSizesHelp) + "\n" + kExitStatusHelp);

  d9d::dist::ProcessGroupPtr world;
  try {
    world = d9d::dist::init();  // a world of one unless a launcher started this process
  } catch (const d9d::Error& e) {
    std::cerr << "d9d: error: " << e.what() << "\n";
    return kExitFailure;
  }
  const bool rank0 = world->rank() == 0;

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (!rank0) return e.get_exit_code() == 0 ? kExitOk : kExitUsage;  // rank 0 says it
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  const Command& command = *std::find_if(commands.begin(), commands.end(),
                                         [](const Command& c) { return c.app->parsed(); });
  if (world->size() > 1 && !command.distributed) {
    if (rank0) {
      std::cerr << "d9d: only `d9d convert` runs under mpirun with more than one process (and "
                   "`d9d load` with a tensor-parallel spec; this job has "
                << world->size() << ")\n";
    }
    return kExitUsage;
  }

  try {
    return command.run();
  } catch (const d9d::dist::CollectiveError& e) {  // every rank has it: rank 0 says it
    if (rank0) std::cerr << "d9d: error: " << e.what() << "\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    const std::string what =
        dynamic_cast<const std::bad_alloc*>(&e) != nullptr ? "out of memory" : e.what();
    if (world->size() == 1) {
      std::cerr << "d9d: error: " << what << "\n";
      return kExitFailure;
    }
    d9d::dist::abort_job(kExitFailure,
                         "d9d: error: [rank " + std::to_string(world->rank()) + "] " + what);
  }
}
