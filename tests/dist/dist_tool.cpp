// Helpers for dist_cli.py that need a job misbehaving on purpose.
//
//   dist_tool hang   rank 1 never comes to a barrier the others wait in: the watchdog ends the job
//                    after D9D_DIST_TIMEOUT seconds (Note [bounded failure]).
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <d9d/dist/process_group.hpp>

int main(int argc, char** argv) {
  if (argc != 2 || std::strcmp(argv[1], "hang") != 0) {
    std::fprintf(stderr, "usage: dist_tool hang\n");
    return 2;
  }
  const d9d::dist::ProcessGroupPtr world = d9d::dist::init();
  world->barrier();  // everyone is here
  if (world->rank() == 1) {
    ::sleep(3600);  // alive, but never coming
    return 0;
  }
  world->barrier();
  std::fprintf(stderr, "dist_tool: rank %d passed a barrier rank 1 never reached\n", world->rank());
  return 0;
}
