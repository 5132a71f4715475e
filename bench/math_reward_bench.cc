// Math-reward scoring throughput, single thread, in items/s, against Math-Verify (Python) on the
// same items. Each item is a (completion, gold) pair from the fixture; scoring is
// ExtractFinalAnswer + MathAnswersEqual, the work the "math" RewardFunction does per item. Our
// verdicts are first checked against the Math-Verify labels in the file (#wrong column). Not a
// test; bench/run_math_reward_bench.sh runs both and prints the ratio.
// Usage: math_reward_bench --cases CASES.jsonl [--repeats N] [--mv-items-per-s X]
//                          [--show-wrong]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "reward/math_reward.h"

namespace {

struct Item {
  std::string completion;
  std::string gold;
  bool expected = false;
};

bool ScoreItem(const Item& item) {
  auto answer = grpo::ExtractFinalAnswer(item.completion);
  return answer.has_value() && grpo::MathAnswersEqual(item.gold, *answer);
}

}  // namespace

int main(int argc, char** argv) {
  std::string cases_path = "tests/fixtures/reward/math_cases.jsonl";
  int repeats = 200;
  double mv_items_per_s = 0.0;
  bool show_wrong = false;
  for (int k = 1; k < argc; ++k) {
    std::string a = argv[k];
    if (a == "--cases" && k + 1 < argc) {
      cases_path = argv[++k];
    } else if (a == "--repeats" && k + 1 < argc) {
      repeats = std::atoi(argv[++k]);
    } else if (a == "--show-wrong") {
      show_wrong = true;
    } else if (a == "--mv-items-per-s" && k + 1 < argc) {
      mv_items_per_s = std::atof(argv[++k]);
    } else {
      std::fprintf(stderr, "usage: math_reward_bench --cases F [--repeats N] [--mv-items-per-s X]\n");
      return 2;
    }
  }
  std::ifstream in(cases_path);
  if (!in) {
    std::fprintf(stderr, "math_reward_bench: cannot open %s\n", cases_path.c_str());
    return 1;
  }
  std::vector<Item> items;
  std::string line;
  size_t total_bytes = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json c;
    try {
      c = nlohmann::json::parse(line);
      items.push_back({c.at("completion").get<std::string>(), c.at("gold").get<std::string>(),
                       c.at("expected").get<bool>()});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "math_reward_bench: %s: bad line: %s\n", cases_path.c_str(), e.what());
      return 1;
    }
    total_bytes += items.back().completion.size();
  }
  // Validate: our verdicts against the Math-Verify labels.
  int num_wrong = 0;
  for (const Item& item : items) {
    if (ScoreItem(item) == item.expected) continue;
    ++num_wrong;
    if (show_wrong) {
      std::printf("wrong: gold=%s extracted=%s math_verify=%d completion=%s\n", item.gold.c_str(),
                  grpo::ExtractFinalAnswer(item.completion).value_or("<none>").c_str(),
                  int(item.expected), item.completion.c_str());
    }
  }
  // Warm up, then time `repeats` passes over the items.
  int hits = 0;
  for (const Item& item : items) hits += ScoreItem(item);
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r)
    for (const Item& item : items) hits += ScoreItem(item);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double n = static_cast<double>(items.size()) * repeats;
  if (hits < 0) std::printf("unreachable\n");  // keeps the scoring loop observable
  double ips = n / secs;
  std::printf("items %zu (mean completion %.0f bytes) x %d repeats  #wrong vs Math-Verify %d\n",
              items.size(), items.empty() ? 0.0 : double(total_bytes) / items.size(), repeats,
              num_wrong);
  std::printf("grpo math reward: %.0f items/s (%.2f us/item, 1 thread)\n", ips, 1e6 / ips);
  if (mv_items_per_s > 0) {
    std::printf("Math-Verify:      %.0f items/s\n", mv_items_per_s);
    std::printf("ratio grpo / Math-Verify: %.0fx\n", ips / mv_items_per_s);
  }
  return 0;
}
