#include <cstdio>

#include "cli/commands.h"

namespace grpo::cli {

int RunModelCommand(const std::vector<std::string>& args) {
  std::fprintf(stderr, "grpo model: not built yet\n");
  return 2;
}

}  // namespace grpo::cli
