// The BPE model of a byte-level tokenizer: reading vocab and merges from tokenizer.json and
// merging one pre-token (lowest-rank adjacent pair first, ties to the leftmost, as HF's
// Word::merge_all), with a per-thread cache of pre-token -> ids.
#include <atomic>
#include <queue>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/tokenizer_internal.h"

namespace grpo::tokenizer_internal {
namespace {

using nlohmann::json;

std::atomic<uint64_t> g_next_instance_id{1};

// Pieces at most this long are cached (HF caches words shorter than 256 bytes too).
constexpr size_t kMaxCachedPieceBytes = 256;
// A thread's cache for one model is dropped when it reaches this many entries.
constexpr size_t kMaxCacheEntries = 1 << 18;

struct PieceCache {
  absl::flat_hash_map<std::string, std::vector<int32_t>> map;
};

// Caches live per thread, keyed by the model's instance id (never reused, unlike an address).
// A thread keeps caches for at most kMaxCachedModels models; caches of destroyed models are
// dropped when that limit is reached (another thread cannot reach them sooner).
constexpr size_t kMaxCachedModels = 8;
PieceCache& ThreadCache(uint64_t instance_id) {
  thread_local absl::flat_hash_map<uint64_t, PieceCache> caches;
  auto it = caches.find(instance_id);
  if (it != caches.end()) return it->second;
  if (caches.size() >= kMaxCachedModels) caches.clear();
  return caches[instance_id];
}

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::FromJson(const json& m, const std::string& source) {
  const std::string where = absl::StrCat(source, ": model");
  if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  const std::string type =
      m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "";
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat(where, " type \"", type, "\" is not supported (only BPE)"));
  }
  auto bpe = std::unique_ptr<Bpe>(new Bpe());
  bpe->instance_id_ = g_next_instance_id.fetch_add(1);
  auto bool_field = [&](const char* key) -> absl::StatusOr<bool> {
    if (!m.contains(key) || m[key].is_null()) return false;
    if (!m[key].is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be a boolean"));
    }
    return m[key].get<bool>();
  };
  ASSIGN_OR_RETURN(bool byte_fallback, bool_field("byte_fallback"));
  if (byte_fallback) {
    return absl::UnimplementedError(
        absl::StrCat(where, ".byte_fallback: true is not supported (byte-level BPE only)"));
  }
  ASSIGN_OR_RETURN(bpe->ignore_merges_, bool_field("ignore_merges"));
  ASSIGN_OR_RETURN(bpe->fuse_unk_, bool_field("fuse_unk"));
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0)) {
    return absl::UnimplementedError(absl::StrCat(where, ".dropout is not supported (use null)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      return absl::UnimplementedError(
          absl::StrCat(where, ".", key, " is not supported (use null or \"\")"));
    }
  }
  if (!m.contains("vocab") || !m["vocab"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".vocab must be an object"));
  }
  for (const auto& [token, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX / 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".vocab[\"", token, "\"] must be a non-negative integer id"));
    }
    const int32_t i = static_cast<int32_t>(id.get<int64_t>());
    if (static_cast<size_t>(i) >= bpe->id_to_token_.size()) bpe->id_to_token_.resize(i + 1);
    if (!bpe->id_to_token_[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".vocab: id ", i, " is used twice"));
    }
    bpe->id_to_token_[i] = token;
    bpe->vocab_[token] = i;
  }
  const ByteLevelTable& table = ByteLevel();
  for (int b = 0; b < 256; ++b) {
    auto it = bpe->vocab_.find(table.utf8[b]);
    bpe->byte_id_[b] = it == bpe->vocab_.end() ? -1 : it->second;
  }
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    const std::string unk = m["unk_token"].is_string() ? m["unk_token"].get<std::string>() : "";
    auto it = bpe->vocab_.find(unk);
    if (it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".unk_token \"", unk, "\" is not in the vocab"));
    }
    bpe->unk_id_ = it->second;
  }
  if (!m.contains("merges") || !m["merges"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".merges must be an array"));
  }
  int32_t rank = 0;
  for (const json& merge : m["merges"]) {
    std::string a, b;
    if (merge.is_string()) {  // legacy "a b"
      const std::string s = merge.get<std::string>();
      if (rank == 0 && s.rfind("#version", 0) == 0) continue;
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".merges[", rank, "] \"", s, "\" must be two tokens separated by one space"));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      a = merge[0].get<std::string>();
      b = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
    auto ia = bpe->vocab_.find(a), ib = bpe->vocab_.find(b), iab = bpe->vocab_.find(a + b);
    if (ia == bpe->vocab_.end() || ib == bpe->vocab_.end() || iab == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".merges[", rank, "] (\"", a, "\", \"",
                                                     b, "\"): a token is not in the vocab"));
    }
    // The first (lowest-rank) occurrence of a pair wins, as in HF.
    bpe->merges_.try_emplace(PairKey(ia->second, ib->second), rank, iab->second);
    ++rank;
  }
  return bpe;
}

void Bpe::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() > kMaxCachedPieceBytes) {
    Merge(piece, ids);
    return;
  }
  PieceCache& cache = ThreadCache(instance_id_);
  auto it = cache.map.find(absl::string_view(piece.data(), piece.size()));
  if (it != cache.map.end()) {
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return;
  }
  std::vector<int32_t> out;
  Merge(piece, &out);
  ids->insert(ids->end(), out.begin(), out.end());
  if (cache.map.size() >= kMaxCacheEntries) cache.map.clear();
  cache.map.emplace(std::string(piece), std::move(out));
}

void Bpe::Merge(std::string_view piece, std::vector<int32_t>* ids) const {
  const ByteLevelTable& table = ByteLevel();
  if (ignore_merges_) {
    std::string mapped;
    for (char c : piece) mapped += table.utf8[static_cast<uint8_t>(c)];
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // Symbols as a doubly linked list over the piece's bytes; len 0 marks a merged-away symbol.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    int32_t len;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  bool last_unk = false;
  for (char c : piece) {
    int32_t id = byte_id_[static_cast<uint8_t>(c)];
    if (id < 0) {  // a byte whose symbol is not in the vocab: unk, fused or not; else dropped
      if (unk_id_ < 0) continue;
      if (fuse_unk_ && last_unk) continue;
      id = unk_id_;
      last_unk = true;
    } else {
      last_unk = false;
    }
    const int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const {  // a max-heap on "higher priority"
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto push_pair = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

}  // namespace grpo::tokenizer_internal
