// Tests for common/json_config.h: merging over defaults, --set overrides, typed reads.
#include <catch2/catch.hpp>

#include "common/json_config.h"

namespace grpo {
namespace {

using nlohmann::json;

bool PassThrough(const std::string& key) { return key == "reward" || key == "stage"; }

TEST_CASE("MergeOverDefaults keeps defaults, names unknown keys and kind mismatches") {
  const json defaults = {{"lr", 1e-3}, {"name", "x"}, {"opt", {{"beta", 0.9}, {"on", true}}},
                         {"list", json::array()}, {"reward", json::object()}, {"stage", nullptr}};
  json merged = defaults;
  REQUIRE(MergeOverDefaults(json{{"lr", 2}, {"opt", {{"on", false}}}, {"reward", {{"k", 1}}}},
                            &merged, PassThrough)
              .ok());
  CHECK(merged["lr"] == 2);
  CHECK(merged["opt"]["beta"] == 0.9);
  CHECK(merged["opt"]["on"] == false);
  CHECK(merged["reward"] == json{{"k", 1}});
  CHECK(merged["stage"].is_null());

  json m2 = defaults;
  auto st = MergeOverDefaults(json{{"opt", {{"betta", 1}}}}, &m2, PassThrough);
  CHECK(st.message() == "unknown key 'opt.betta'");
  m2 = defaults;
  st = MergeOverDefaults(json{{"opt", {{"beta", "high"}}}}, &m2, PassThrough);
  CHECK(st.message() == "'opt.beta' must be a number, not string");
  m2 = defaults;
  st = MergeOverDefaults(json{{"reward", 3}}, &m2, PassThrough);
  CHECK(st.message().find("'reward' must be an object") != std::string::npos);
  m2 = defaults;
  CHECK(MergeOverDefaults(json{{"stage", nullptr}}, &m2, PassThrough).ok());
  CHECK(MergeOverDefaults(json{{"stage", {{"steps", 3}}}}, &m2, PassThrough).ok());
  CHECK(!MergeOverDefaults(json::array(), &m2, PassThrough).ok());
}

TEST_CASE("SetDottedKey parses JSON values, falls back to strings and creates objects") {
  json c = {{"a", {{"b", 1}}}};
  REQUIRE(SetDottedKey("a.b=2.5", &c).ok());
  CHECK(c["a"]["b"] == 2.5);
  REQUIRE(SetDottedKey("a.list=[1,2]", &c).ok());
  CHECK(c["a"]["list"] == json::array({1, 2}));
  REQUIRE(SetDottedKey("new.deep.key=plain text", &c).ok());
  CHECK(c["new"]["deep"]["key"] == "plain text");
  CHECK(!SetDottedKey("noequals", &c).ok());
  CHECK(!SetDottedKey("a..b=1", &c).ok());
  CHECK(SetDottedKey("a.b.c=1", &c).message().find("non-object") != std::string::npos);
}

TEST_CASE("ConfigReader reads by dotted path and reports non-integers") {
  const json c = {{"a", {{"n", 3}, {"x", 1.5}, {"s", "t"}, {"v", {"p", "q"}}, {"bad", {1}}}}};
  ConfigReader r{c};
  CHECK(r.Int("a.n") == 3);
  CHECK(r.Double("a.x") == 1.5);
  CHECK(r.Str("a.s") == "t");
  CHECK(r.Strings("a.v") == std::vector<std::string>{"p", "q"});
  CHECK(r.status.ok());
  CHECK(r.Int("a.x") == 0);
  CHECK(r.status.message() == "'a.x' must be an integer");
  ConfigReader r2{c};
  CHECK(r2.Strings("a.bad").empty());
  CHECK(r2.status.message() == "'a.bad' must hold strings");
}

}  // namespace
}  // namespace grpo
