// Status helpers shared by every module: RETURN_IF_ERROR / ASSIGN_OR_RETURN (Debian's abseil
// predates ABSL_RETURN_IF_ERROR), GRPO_CHECK for our own invariants (always on), and
// WithContext() to add a breadcrumb to an error on its way up.
#pragma once

#include <cstdio>
#include <cstdlib>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace grpo {

// Returns `s` with "context: " prepended to its message; OK stays OK.
inline absl::Status WithContext(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

[[noreturn]] inline void CheckFailed(const char* file, int line, const char* expr,
                                     absl::string_view msg) {
  std::fprintf(stderr, "%s:%d: GRPO_CHECK(%s) failed%s%.*s\n", file, line, expr,
               msg.empty() ? "" : ": ", static_cast<int>(msg.size()), msg.data());
  std::fflush(stderr);
  std::abort();
}

}  // namespace grpo

#define GRPO_STATUS_CONCAT_INNER(a, b) a##b
#define GRPO_STATUS_CONCAT(a, b) GRPO_STATUS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status _grpo_status = (expr);            \
    if (!_grpo_status.ok()) return _grpo_status;     \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(*tmp)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(GRPO_STATUS_CONCAT(_grpo_statusor_, __LINE__), lhs, expr)

// Our own invariants; a failure is a bug in grpo, never a user's mistake.
#define GRPO_CHECK(cond)                                              \
  do {                                                                \
    if (!(cond)) ::grpo::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)
#define GRPO_CHECK_MSG(cond, msg)                                      \
  do {                                                                 \
    if (!(cond)) ::grpo::CheckFailed(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)
#ifdef NDEBUG
#define GRPO_DCHECK(cond) \
  do {                    \
  } while (0)
#else
#define GRPO_DCHECK(cond) GRPO_CHECK(cond)
#endif
