// Entry points of the `grpo` subcommand groups. Each takes the arguments after its group name
// and returns the process exit code (0 ok, 1 runtime error, 2 usage error).
#pragma once

#include <string>
#include <vector>

namespace grpo::cli {

int RunModelCommand(const std::vector<std::string>& args);
int RunDataCommand(const std::vector<std::string>& args);
int RunTokenizeCommand(const std::vector<std::string>& args);
int RunDetokenizeCommand(const std::vector<std::string>& args);
int RunRewardCommand(const std::vector<std::string>& args);
int RunPlotCommand(const std::vector<std::string>& args);
int RunSftCommand(const std::vector<std::string>& args);
int RunTrainCommand(const std::vector<std::string>& args);
int RunRolloutCommand(const std::vector<std::string>& args);
int RunLearnerCommand(const std::vector<std::string>& args);
int RunEvalCommand(const std::vector<std::string>& args);

}  // namespace grpo::cli
