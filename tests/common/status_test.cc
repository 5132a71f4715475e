// Tests for common/status.h and common/json_util.h.
#include <catch2/catch.hpp>

#include "common/json_util.h"
#include "common/status.h"

namespace grpo {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

TEST_CASE("ASSIGN_OR_RETURN passes values and errors through", "[common]") {
  int q = 0;
  REQUIRE(Quarter(12, &q).ok());
  CHECK(q == 3);
  absl::Status s = Quarter(6, &q);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(WithContext(s, "file.json").message() == "file.json: odd");
}

TEST_CASE("ReadJsonFile names the file on missing and malformed input", "[common]") {
  auto missing = ReadJsonFile("/nonexistent/x.json");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("/nonexistent/x.json") != std::string::npos);
  const std::string path = std::string(GRPO_BINARY_DIR) + "/bad_json_test.json";
  REQUIRE(WriteFileAtomic(path, "{\"a\": [1, 2,").ok());
  auto bad = ReadJsonFile(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("not valid JSON") != std::string::npos);
}

}  // namespace
}  // namespace grpo

namespace grpo {
namespace {

TEST_CASE("ParseJson bounds nesting instead of overflowing the stack", "[common]") {
  const int kDeep = 200000;
  std::string deep(kDeep, '[');
  deep.append(kDeep, ']');
  auto too_deep = ParseJson(deep);
  REQUIRE_FALSE(too_deep.ok());
  CHECK(std::string(too_deep.status().message()).find("nested deeper than") != std::string::npos);
  std::string ok_depth(kMaxJsonDepth - 1, '[');
  ok_depth.append(kMaxJsonDepth - 1, ']');
  CHECK(ParseJson(ok_depth).ok());
  auto bad = ParseJson("{\"a\": }");
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("not valid JSON at byte") != std::string::npos);
}

}  // namespace
}  // namespace grpo
