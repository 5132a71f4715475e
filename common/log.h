// A small logger: one line per call to stderr, "I 16:11:24.123 file.cc:42] message".
// Debian's abseil has no absl/log; this is enough for services and tools.
// Usage: GRPO_LOG(INFO, "loaded %d tensors from %s", n, path);
#pragma once

#include <string>

#include "absl/strings/str_format.h"

namespace grpo {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo; env GRPO_LOG_LEVEL=debug|info|warning|error.
LogLevel MinLogLevel();
void SetMinLogLevel(LogLevel level);
void LogLine(LogLevel level, const char* file, int line, const std::string& message);

}  // namespace grpo

#define GRPO_LOG_LEVEL_DEBUG ::grpo::LogLevel::kDebug
#define GRPO_LOG_LEVEL_INFO ::grpo::LogLevel::kInfo
#define GRPO_LOG_LEVEL_WARNING ::grpo::LogLevel::kWarning
#define GRPO_LOG_LEVEL_ERROR ::grpo::LogLevel::kError
#define GRPO_LOG(level, ...)                                                       \
  do {                                                                             \
    if (GRPO_LOG_LEVEL_##level >= ::grpo::MinLogLevel())                          \
      ::grpo::LogLine(GRPO_LOG_LEVEL_##level, __FILE__, __LINE__,                  \
                      ::absl::StrFormat(__VA_ARGS__));                             \
  } while (0)
