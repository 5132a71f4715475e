// Hugging Face checkpoint directories: one `model.safetensors`, or shards listed in
// `model.safetensors.index.json`. Opening (with cross-checks between index and shards) and
// writing (greedy sharding, index, removal of stale files). Declared in model/safetensors.h.
#include "model/safetensors.h"
#include "model/safetensors_internal.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json_util.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace grpo {

namespace {

using nlohmann::json;
using safetensors_internal::ErrnoText;
using safetensors_internal::FileError;
using safetensors_internal::kFixHint;
using safetensors_internal::TensorError;
using safetensors_internal::WriteByteSize;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointDir>> CheckpointDir::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::unique_ptr<CheckpointDir> c(new CheckpointDir());
  c->dir_ = dir;
  std::error_code ec;
  const std::string index_path = dir + "/" + kIndexFile;
  const std::string single_path = dir + "/" + kSingleFile;
  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec)) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": no ", kSingleFile, " or ", kIndexFile, " found"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(single_path));
    for (const TensorInfo& t : f->tensors()) c->entries_[t.name] = Entry{f.get(), &t};
    c->files_.push_back(std::move(f));
    return c;
  }

  ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
  if (!index.is_object()) {
    return FileError(index_path, absl::StrCat("must be a JSON object, got ", JsonTypeName(index)));
  }
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return FileError(index_path,
                     absl::StrCat("'weight_map' must be an object of tensor name -> shard file, "
                                  "got ", wm == index.end() ? "nothing" : JsonTypeName(*wm)));
  }
  std::map<std::string, std::string> weight_map;  // tensor -> shard
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string() || it->get<std::string>().empty()) {
      return FileError(index_path, absl::StrCat("weight_map['", it.key(),
                                                "'] must be a shard file name, got ",
                                                it->dump()));
    }
    weight_map[it.key()] = it->get<std::string>();
  }
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [tensor, shard] : weight_map) {
    if (shards.count(shard)) continue;
    const std::string shard_path = dir + "/" + shard;
    if (!fs::exists(shard_path, ec)) {
      return absl::NotFoundError(absl::StrCat(
          index_path, ": weight_map names shard '", shard, "' (for tensor '", tensor,
          "'), which does not exist in ", dir, "; ", kFixHint));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(shard_path));
    shards[shard] = f.get();
    c->files_.push_back(std::move(f));
  }
  for (const auto& [tensor, shard] : weight_map) {
    const SafetensorsFile* f = shards[shard];
    const TensorInfo* t = f->Find(tensor);
    if (t == nullptr) {
      return FileError(index_path, absl::StrCat("weight_map puts tensor '", tensor, "' in shard '",
                                                shard, "', which does not contain it; ",
                                                kFixHint));
    }
    c->entries_[tensor] = Entry{f, t};
  }
  for (const auto& [shard, f] : shards) {
    for (const TensorInfo& t : f->tensors()) {
      auto it = weight_map.find(t.name);
      if (it == weight_map.end()) {
        return FileError(f->path(), absl::StrCat("holds tensor '", t.name, "', which ", kIndexFile,
                                                 " does not list; ", kFixHint));
      }
      if (it->second != shard) {
        return FileError(f->path(), absl::StrCat("holds tensor '", t.name, "', which ", kIndexFile,
                                                 " assigns to shard '", it->second,
                                                 "' (tensor in two shards); ", kFixHint));
      }
    }
  }
  return c;
}

std::vector<std::string> CheckpointDir::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, e] : entries_) names.push_back(name);
  return names;
}

CheckpointDir::Entry CheckpointDir::Find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? Entry{} : it->second;
}

namespace {

// Files an earlier WriteCheckpointWeights may have left: model.safetensors, the index, shards.
bool IsWeightsFile(const std::string& name) {
  if (name == kSingleFile || name == kIndexFile) return true;
  // model-NNNNN-of-NNNNN.safetensors (5 or more digits each)
  const std::string prefix = "model-", suffix = ".safetensors";
  if (name.size() < prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  const std::string mid =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  const size_t of = mid.find("-of-");
  if (of == std::string::npos) return false;
  const std::string a = mid.substr(0, of), b = mid.substr(of + 4);
  auto digits = [](const std::string& s) {
    return s.size() >= 5 && std::all_of(s.begin(), s.end(), [](char ch) {
             return ch >= '0' && ch <= '9';
           });
  };
  return digits(a) && digits(b);
}

}  // namespace

absl::Status WriteCheckpointWeights(const std::string& dir,
                                    absl::Span<const TensorToWrite> tensors,
                                    int64_t max_shard_bytes) {
  namespace fs = std::filesystem;
  if (max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": max_shard_bytes must be positive, got ", max_shard_bytes));
  }
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && order[i - 1]->name == order[i]->name) {
      return TensorError(dir, order[i]->name, "given twice; tensor names must be unique");
    }
    ASSIGN_OR_RETURN(uint64_t bytes, WriteByteSize(dir, *order[i]));
    sizes.push_back(bytes);
    total += bytes;
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  }
  std::set<std::string> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsWeightsFile(name)) stale.insert(name);
  }
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot list: ", ec.message()));

  std::set<std::string> written;
  if (total <= static_cast<uint64_t>(max_shard_bytes)) {
    std::vector<TensorToWrite> all;
    for (const TensorToWrite* t : order) all.push_back(*t);
    RETURN_IF_ERROR(WriteSafetensors(dir + "/" + kSingleFile, all));
    written.insert(kSingleFile);
  } else {
    // Greedy in name order; a tensor larger than the limit ends up alone in its shard.
    std::vector<std::vector<size_t>> groups;
    uint64_t cur = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      if (groups.empty() || (!groups.back().empty() &&
                             cur + sizes[i] > static_cast<uint64_t>(max_shard_bytes))) {
        groups.emplace_back();
        cur = 0;
      }
      groups.back().push_back(i);
      cur += sizes[i];
    }
    json weight_map = json::object();
    const size_t n = groups.size();
    for (size_t g = 0; g < n; ++g) {
      const std::string shard = absl::StrFormat("model-%05d-of-%05d.safetensors", g + 1, n);
      std::vector<TensorToWrite> part;
      for (size_t i : groups[g]) {
        part.push_back(*order[i]);
        weight_map[order[i]->name] = shard;
      }
      RETURN_IF_ERROR(WriteSafetensors(dir + "/" + shard, part));
      written.insert(shard);
    }
    std::string text;
    try {
      json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      text = index.dump(2) + "\n";
    } catch (const json::exception& e) {
      return FileError(dir + "/" + kIndexFile, absl::StrCat("cannot build index: ", e.what()));
    }
    RETURN_IF_ERROR(WriteFileAtomic(dir + "/" + kIndexFile, text));
    written.insert(kIndexFile);
  }

  // The stale index goes first: CheckpointDir::Open prefers an index over model.safetensors.
  std::vector<std::string> remove;
  if (stale.count(kIndexFile) && !written.count(kIndexFile)) remove.push_back(kIndexFile);
  for (const std::string& name : stale) {
    if (!written.count(name) && name != kIndexFile) remove.push_back(name);
  }
  for (const std::string& name : remove) {
    const std::string p = dir + "/" + name;
    if (std::remove(p.c_str()) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat(p, ": cannot remove stale file from an earlier "
                                              "save: ", ErrnoText(), "; delete it by hand"));
    }
  }
  return absl::OkStatus();
}

}  // namespace grpo
