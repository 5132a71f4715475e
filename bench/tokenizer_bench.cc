// Tokenizer encode throughput, single thread, in MB/s of UTF-8 input, against HF `tokenizers`.
// The text file is split into documents at blank lines ("\n\n"), exactly as
// bench/hf_tokenizer_baseline.py does; our ids are checked against HF's (a #wrong count) before
// timing. Not a test; bench/run_tokenizer_bench.sh runs both and prints the ratio.
// Usage: tokenizer_bench --tokenizer T.json --text FILE [--hf-ids IDS.jsonl] [--hf-mbps X]
//                        [--repeats N] [--threads N]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/json_util.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

std::vector<std::string> SplitDocuments(const std::string& text) {
  std::vector<std::string> docs;
  size_t start = 0;
  while (true) {
    const size_t p = text.find("\n\n", start);
    docs.push_back(text.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 2;
  }
  return docs;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, text_path, hf_ids_path;
  double hf_mbps = 0;
  int repeats = 5, threads = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokenizer")
      tokenizer_path = v;
    else if (k == "--text")
      text_path = v;
    else if (k == "--hf-ids")
      hf_ids_path = v;
    else if (k == "--hf-mbps")
      hf_mbps = std::stod(v);
    else if (k == "--repeats")
      repeats = std::stoi(v);
    else if (k == "--threads")
      threads = std::stoi(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (tokenizer_path.empty() || text_path.empty()) {
    std::fprintf(stderr,
                 "usage: tokenizer_bench --tokenizer T.json --text FILE [--hf-ids IDS.jsonl] "
                 "[--hf-mbps X] [--repeats N] [--threads N]\n");
    return 2;
  }
  auto tok = grpo::Tokenizer::FromFile(tokenizer_path);
  auto text = grpo::ReadFile(text_path);
  if (!tok.ok() || !text.ok()) {
    std::fprintf(stderr, "error: %s\n",
                 std::string((tok.ok() ? text.status() : tok.status()).message()).c_str());
    return 1;
  }
  const std::vector<std::string> docs = SplitDocuments(*text);
  const double mb = text->size() / 1e6;

  // Validate (and warm the cache) first: every document against HF's ids.
  std::vector<std::vector<int32_t>> ids(docs.size());
  int64_t num_tokens = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto r = (*tok)->Encode(docs[i], false);
    if (!r.ok()) {
      std::fprintf(stderr, "doc %zu: %s\n", i, std::string(r.status().message()).c_str());
      return 1;
    }
    ids[i] = std::move(*r);
    num_tokens += static_cast<int64_t>(ids[i].size());
  }
  if (!hf_ids_path.empty()) {
    std::ifstream in(hf_ids_path);
    std::string line;
    size_t i = 0, wrong = 0;
    for (; std::getline(in, line); ++i) {
      const auto want = nlohmann::json::parse(line).get<std::vector<int32_t>>();
      if (i >= ids.size() || ids[i] != want) ++wrong;
    }
    wrong += i != ids.size() ? 1 : 0;
    std::printf("validation: %zu documents, #wrong %zu (ids compared with HF tokenizers)\n",
                ids.size(), wrong);
    if (wrong != 0) return 1;
  }

  std::vector<double> secs;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& d : docs) {
      auto r = (*tok)->Encode(d, false);
      if (!r.ok()) return 1;
    }
    secs.push_back(Seconds(t0, std::chrono::steady_clock::now()));
  }
  std::sort(secs.begin(), secs.end());
  const double ours = mb / secs[secs.size() / 2];
  std::printf("text: %.2f MB, %zu documents, %lld tokens (%.2f bytes/token)\n", mb, docs.size(),
              static_cast<long long>(num_tokens), text->size() / double(num_tokens));
  std::printf("grpo encode, 1 thread: %.1f MB/s (median of %d; best %.1f MB/s)\n", ours, repeats,
              mb / secs.front());
  if (hf_mbps > 0) {
    std::printf("HF tokenizers, 1 thread: %.1f MB/s; ratio grpo/HF %.2fx\n", hf_mbps,
                ours / hf_mbps);
  }
  if (threads > 1) {
    const auto t0 = std::chrono::steady_clock::now();
    auto batch = (*tok)->EncodeBatch(docs, false, threads);
    const double s = Seconds(t0, std::chrono::steady_clock::now());
    if (!batch.ok() || *batch != ids) {
      std::fprintf(stderr, "batch encode differs from sequential\n");
      return 1;
    }
    std::printf("grpo EncodeBatch, %d threads (cold per-thread caches): %.1f MB/s\n", threads,
                mb / s);
  }
  return 0;
}
