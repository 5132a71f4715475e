// Tests for learner/dataset.h: row validation with file:line errors, skip mode, seeded shuffling
// across epochs, and exact save/restore of the read position.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "learner/dataset.h"

namespace grpo {
namespace {

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("grpo_dataset_test_" + name)).string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string Row(int i) {
  return "{\"prompt\": \"q" + std::to_string(i) + "\", \"ground_truth\": " + std::to_string(i) +
         ", \"data_source\": \"test\"}\n";
}

std::string Rows(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += Row(i);
  return s;
}

Dataset LoadOk(const std::string& path, uint64_t seed = 7, bool shuffle = true) {
  DatasetConfig c;
  c.path = path;
  c.seed = seed;
  c.shuffle = shuffle;
  auto ds = Dataset::Load(c);
  INFO(ds.status().ToString());
  REQUIRE(ds.ok());
  return std::move(*ds);
}

// The ground_truth values (= original row numbers) of the next n examples.
std::vector<int> Take(Dataset& ds, int n) {
  std::vector<int> out;
  for (const Example* e : ds.NextBatch(n)) out.push_back(e->ground_truth.get<int>());
  return out;
}

TEST_CASE("rows parse with every prompt form and optional extra", "[dataset]") {
  const std::string path = WriteTemp("good.jsonl",
      "{\"prompt\": \"What is 1+1?\", \"ground_truth\": \"2\", \"data_source\": \"arith\"}\n"
      "\n"
      "{\"prompt\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": "
      "\"u\"}], \"ground_truth\": {\"target\": 3, \"numbers\": [1, 2]}, \"data_source\": "
      "\"countdown\", \"extra\": {\"solution\": \"1 + 2\"}}\r\n");
  Dataset ds = LoadOk(path, 0, /*shuffle=*/false);
  REQUIRE(ds.size() == 2);
  CHECK(ds.row(0).prompt == Prompt("What is 1+1?"));
  CHECK(ds.row(0).ground_truth == "2");
  CHECK(ds.row(0).extra.is_null());
  CHECK(ds.row(1).line == 3);
  CHECK(ds.row(1).prompt == Prompt(std::vector<ChatMessage>{{"system", "s"}, {"user", "u"}}));
  CHECK(ds.row(1).ground_truth["numbers"] == nlohmann::json({1, 2}));
  CHECK(ds.row(1).extra["solution"] == "1 + 2");
  CHECK(ExampleToJson(ds.row(1))["extra"]["solution"] == "1 + 2");
  CHECK_FALSE(ExampleToJson(ds.row(0)).contains("extra"));
}

TEST_CASE("each kind of bad line is an error naming file and line", "[dataset]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{\"ground_truth\": 1, \"data_source\": \"t\"}", "missing required key \"prompt\""},
      {"{\"prompt\": \"q\", \"data_source\": \"t\"}", "missing required key \"ground_truth\""},
      {"{\"prompt\": 5, \"ground_truth\": 1, \"data_source\": \"t\"}", "not integer"},
      {"{\"prompt\": {\"role\": \"user\"}, \"ground_truth\": 1, \"data_source\": \"t\"}",
       "not object"},
      {"{\"prompt\": [{\"role\": \"wizard\", \"content\": \"x\"}], \"ground_truth\": 1, "
       "\"data_source\": \"t\"}",
       "role \"wizard\""},
      {"{\"prompt\": \"q\", \"groundtruth\": 1, \"ground_truth\": 1, \"data_source\": \"t\"}",
       "unknown key \"groundtruth\""},
      {"{\"prompt\": \"q\", \"ground_truth\": 1, \"data_source\": 3}", "\"data_source\" must be"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [line, why] = cases[i];
    const std::string path = WriteTemp("bad" + std::to_string(i) + ".jsonl", Rows(2) + line + "\n" + Row(9));
    DatasetConfig c;
    c.path = path;
    auto ds = Dataset::Load(c);
    INFO(line);
    REQUIRE_FALSE(ds.ok());
    const std::string msg(ds.status().message());
    INFO(msg);
    CHECK(msg.rfind(path + ":3: ", 0) == 0);
    CHECK(msg.find(why) != std::string::npos);
  }
}

TEST_CASE("skip mode counts bad lines and keeps the first messages", "[dataset]") {
  const std::string path = WriteTemp("skip.jsonl",
      Row(0) + "garbage\n" + Row(1) + "{\"prompt\": 1}\n[]\n" + Row(2) + "{}\n");
  DatasetConfig c;
  c.path = path;
  c.on_bad_line = "skip";
  c.max_bad_line_messages = 2;
  auto ds = Dataset::Load(c);
  REQUIRE(ds.ok());
  CHECK(ds->size() == 3);
  CHECK(ds->num_bad_lines() == 4);
  REQUIRE(ds->bad_line_messages().size() == 2);
  CHECK(ds->bad_line_messages()[0].rfind(path + ":2: not valid JSON", 0) == 0);
  CHECK(ds->bad_line_messages()[1].rfind(path + ":4: ", 0) == 0);
  CHECK(ds->row(2).line == 6);

  c.on_bad_line = "ignore";
  CHECK(Dataset::Load(c).status().message().find("\"error\" or \"skip\"") != std::string::npos);
}

TEST_CASE("empty datasets and missing files are errors", "[dataset]") {
  DatasetConfig c;
  c.path = WriteTemp("empty.jsonl", "\n  \n");
  auto ds = Dataset::Load(c);
  REQUIRE_FALSE(ds.ok());
  CHECK(ds.status().message().find("empty") != std::string::npos);
  c.path = WriteTemp("allbad.jsonl", "x\ny\n");
  c.on_bad_line = "skip";
  ds = Dataset::Load(c);
  REQUIRE_FALSE(ds.ok());
  CHECK(ds.status().message().find("all 2 rows were bad") != std::string::npos);
  c.path = "/nonexistent/grpo.jsonl";
  CHECK(Dataset::Load(c).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("shuffling is a seeded permutation that changes every epoch", "[dataset]") {
  const std::string path = WriteTemp("shuffle.jsonl", Rows(50));
  Dataset a = LoadOk(path, 11);
  Dataset b = LoadOk(path, 11);
  Dataset other_seed = LoadOk(path, 12);
  std::vector<int> identity(50);
  for (int i = 0; i < 50; ++i) identity[i] = i;

  const std::vector<int> e0 = Take(a, 50), e1 = Take(a, 50), e2 = Take(a, 50);
  for (const auto* epoch : {&e0, &e1, &e2}) {
    std::vector<int> sorted = *epoch;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == identity);  // each epoch visits every row exactly once
    CHECK(*epoch != identity);  // and is actually shuffled
  }
  CHECK(e0 != e1);
  CHECK(e1 != e2);
  CHECK(a.position().epoch == 2);
  CHECK(a.position().index == 50);
  // Same seed, same order, whatever the batch sizes; another seed, another order.
  std::vector<int> b_all = Take(b, 7);
  for (int n : {43, 1, 99}) {
    std::vector<int> more = Take(b, n);
    b_all.insert(b_all.end(), more.begin(), more.end());
  }
  std::vector<int> a_all = e0;
  a_all.insert(a_all.end(), e1.begin(), e1.end());
  a_all.insert(a_all.end(), e2.begin(), e2.end());
  CHECK(b_all == a_all);
  CHECK(Take(other_seed, 50) != e0);

  Dataset ordered = LoadOk(path, 11, /*shuffle=*/false);
  CHECK(Take(ordered, 50) == identity);
  CHECK(Take(ordered, 50) == identity);
}

TEST_CASE("a restored position continues exactly", "[dataset]") {
  const std::string path = WriteTemp("restore.jsonl", Rows(13));
  for (int consumed : {0, 5, 13, 20, 26, 40}) {  // start, mid-epoch, boundaries, later epochs
    Dataset a = LoadOk(path, 3);
    Take(a, consumed);
    const nlohmann::json saved = a.position().ToJson();
    const std::vector<int> want = Take(a, 30);  // crosses at least two epoch boundaries

    auto pos = DatasetPosition::FromJson(nlohmann::json::parse(saved.dump()));
    REQUIRE(pos.ok());
    Dataset b = LoadOk(path, 3);
    REQUIRE(b.Restore(*pos).ok());
    INFO("consumed " << consumed);
    CHECK(b.position() == *pos);
    CHECK(Take(b, 30) == want);
  }
}

TEST_CASE("restore refuses another seed, another dataset, or a bad position", "[dataset]") {
  const std::string path = WriteTemp("refuse.jsonl", Rows(10));
  Dataset a = LoadOk(path, 3);
  Take(a, 4);
  const DatasetPosition pos = a.position();

  Dataset other_seed = LoadOk(path, 4);
  CHECK(other_seed.Restore(pos).message().find("seed 3") != std::string::npos);

  std::string changed = Rows(10);
  changed.replace(changed.find("q5"), 2, "Q5");
  Dataset edited = LoadOk(WriteTemp("refuse2.jsonl", changed), 3);
  CHECK(edited.Restore(pos).message().find("another dataset") != std::string::npos);
  Dataset longer = LoadOk(WriteTemp("refuse3.jsonl", Rows(11)), 3);
  CHECK(longer.Restore(pos).message().find("another dataset") != std::string::npos);

  DatasetPosition past_end = pos;
  past_end.index = 11;
  CHECK(a.Restore(past_end).message().find("outside") != std::string::npos);

  nlohmann::json j = pos.ToJson();
  j["epcoh"] = 1;
  CHECK(DatasetPosition::FromJson(j).status().message().find("unknown key \"epcoh\"") !=
        std::string::npos);
  j = pos.ToJson();
  j["index"] = -1;
  CHECK_FALSE(DatasetPosition::FromJson(j).ok());
  j.erase("index");
  CHECK(DatasetPosition::FromJson(j).status().message().find("missing \"index\"") !=
        std::string::npos);
}

TEST_CASE("dataset configs parse from JSON with unknown keys refused", "[dataset]") {
  auto c = DatasetConfigFromJson(nlohmann::json::parse(
      R"({"path": "d.jsonl", "seed": 9, "shuffle": false, "on_bad_line": "skip"})"));
  REQUIRE(c.ok());
  CHECK(c->path == "d.jsonl");
  CHECK(c->seed == 9);
  CHECK_FALSE(c->shuffle);
  CHECK(c->on_bad_line == "skip");
  auto bad = DatasetConfigFromJson(nlohmann::json::parse(R"({"path": "d", "sead": 1})"));
  CHECK(bad.status().message().find("unknown key \"sead\"") != std::string::npos);
  bad = DatasetConfigFromJson(nlohmann::json::parse(R"({"path": "d", "seed": -1})"));
  CHECK(bad.status().message().find("non-negative integer") != std::string::npos);
  // A seed built in code as a signed integer (nlohmann stores int literals signed) is accepted.
  auto built = DatasetConfigFromJson(nlohmann::json{{"path", "d"}, {"seed", int64_t{5}}});
  REQUIRE(built.ok());
  CHECK(built->seed == 5);
  CHECK(!DatasetConfigFromJson(nlohmann::json{{"path", "d"}, {"seed", int64_t{-5}}}).ok());
  bad = DatasetConfigFromJson(nlohmann::json::parse(R"({"seed": 1})"));
  CHECK(bad.status().message().find("path is empty") != std::string::npos);
}

}  // namespace
}  // namespace grpo
