// RewardScorer, RewardServiceImpl, StartRewardServer and RemoteReward (reward/reward_service.h).
#include "reward/reward_service.h"

#include <chrono>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status.h"
#include "reward/isolation.h"
#include "reward/params.h"

namespace grpo {
namespace {

// The one place absl::Status becomes grpc::Status (canonical codes share their numbers).
grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Parses a JSON-text field; empty text is null.
absl::StatusOr<nlohmann::json> ParseJsonField(const std::string& text, const char* field) {
  if (text.empty()) return nlohmann::json();
  auto j = ParseJson(text);
  if (!j.ok()) return WithContext(j.status(), field);
  return j;
}

void FillResult(const RewardOutput& out, RewardResult* r) {
  r->set_score(out.score);
  for (const auto& [name, value] : out.components) (*r->mutable_components())[name] = value;
  r->set_info(out.info);
  r->set_error(out.error);
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// ---- RewardScorer ----

RewardScorer::RewardScorer(RewardSet set, int max_batch_size)
    : set_(std::move(set)), max_batch_size_(max_batch_size) {}

absl::StatusOr<std::unique_ptr<RewardScorer>> RewardScorer::FromConfigJson(
    const nlohmann::json& config, int max_batch_size) {
  if (max_batch_size < 1) return absl::InvalidArgumentError("max_batch_size must be >= 1");
  ASSIGN_OR_RETURN(RewardSetConfig c, RewardSetConfig::FromJson(config));
  ASSIGN_OR_RETURN(RewardSet set, RewardSet::Create(c));
  return std::make_unique<RewardScorer>(std::move(set), max_batch_size);
}

absl::StatusOr<RewardInput> RewardScorer::ToRewardInput(const RewardItem& item) {
  RewardInput in;
  for (const auto& [text, field] :
       {std::pair<const std::string*, const char*>{&item.prompt(), "prompt"},
        {&item.completion(), "completion"},
        {&item.data_source(), "data_source"},
        {&item.ground_truth_json(), "ground_truth_json"},
        {&item.extra_json(), "extra_json"}}) {
    if (!IsValidUtf8(*text))
      return absl::InvalidArgumentError(absl::StrCat(field, ": invalid UTF-8"));
  }
  in.prompt = item.prompt();
  in.completion = item.completion();
  in.completion_ids.assign(item.completion_ids().begin(), item.completion_ids().end());
  in.data_source = item.data_source();
  ASSIGN_OR_RETURN(in.ground_truth, ParseJsonField(item.ground_truth_json(), "ground_truth_json"));
  ASSIGN_OR_RETURN(in.extra, ParseJsonField(item.extra_json(), "extra_json"));
  return in;
}

absl::Status RewardScorer::Score(const ScoreRequest& request, ScoreResponse* response) const {
  const int num_items = request.items_size();
  if (num_items > max_batch_size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch of ", num_items, " items is over the server's maximum of ", max_batch_size_));
  }
  // Well-formed items are scored as one batch; malformed ones keep their error.
  std::vector<RewardInput> inputs;
  std::vector<int> input_item;  // request index of inputs[k]
  std::vector<std::string> item_error(num_items);
  for (int i = 0; i < num_items; ++i) {
    absl::StatusOr<RewardInput> in = ToRewardInput(request.items(i));
    if (in.ok()) {
      inputs.push_back(std::move(*in));
      input_item.push_back(i);
    } else {
      item_error[i] = std::string(in.status().message());
    }
  }
  const std::vector<RewardOutput> scored = set_.Score(inputs);
  GRPO_CHECK(scored.size() == inputs.size());
  response->clear_results();
  for (int i = 0; i < num_items; ++i) {
    RewardResult* r = response->add_results();
    r->set_score(set_.config().failure_score);
    r->set_error(item_error[i]);
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    FillResult(scored[k], response->mutable_results(input_item[k]));
  }
  response->clear_counters();
  const auto& functions = set_.functions();
  for (size_t r = 0; r < functions.size(); ++r) {
    const auto* isolated = dynamic_cast<const IsolatedReward*>(functions[r].get());
    if (isolated == nullptr) continue;
    const RewardCounters c = isolated->counters();
    FunctionCounters* fc = response->add_counters();
    fc->set_name(set_.config().rewards[r].key);
    fc->set_calls(c.calls);
    fc->set_timeouts(c.timeouts);
    fc->set_crashes(c.crashes);
    fc->set_errors(c.errors);
  }
  return absl::OkStatus();
}

void RewardScorer::Health(HealthResponse* response) const {
  for (const RewardSpec& s : set_.config().rewards) response->add_rewards(s.key);
}

// ---- RewardServiceImpl ----

grpc::ServerUnaryReactor* RewardServiceImpl::Score(grpc::CallbackServerContext* ctx,
                                                   const ScoreRequest* request,
                                                   ScoreResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // ctx stays valid until Finish, so the worker may ask it whether the client gave up.
  const absl::Status accepted = queue_.Submit(
      request, response, [reactor](absl::Status s) { reactor->Finish(ToGrpcStatus(s)); },
      [ctx] { return ctx->IsCancelled(); });
  if (!accepted.ok()) reactor->Finish(ToGrpcStatus(accepted));
  return reactor;
}

grpc::ServerUnaryReactor* RewardServiceImpl::Health(grpc::CallbackServerContext* ctx,
                                                    const HealthRequest*,
                                                    HealthResponse* response) {
  scorer_->Health(response);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartRewardServer(grpc::Service* service,
                                                                const std::string& host, int port,
                                                                int* selected_port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port ", port, " is not in [0, 65535]"));
  }
  const std::string address = host.find(':') != std::string::npos
                                  ? absl::StrCat("[", host, "]:", port)
                                  : absl::StrCat(host, ":", port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), selected_port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *selected_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  return server;
}

// ---- RemoteReward ----

absl::StatusOr<RemoteRewardOptions> RemoteRewardOptions::FromJson(const nlohmann::json& params) {
  RETURN_IF_ERROR(CheckKnownKeys(params, {"address", "deadline_ms", "failure_score"}));
  RemoteRewardOptions o;
  ASSIGN_OR_RETURN(o.address, GetStringParam(params, "address", ""));
  if (o.address.empty()) {
    return absl::InvalidArgumentError("params.address: required, e.g. \"127.0.0.1:50051\"");
  }
  ASSIGN_OR_RETURN(int64_t deadline, GetIntParam(params, "deadline_ms", o.deadline_ms));
  if (deadline < 1 || deadline > 3600 * 1000) {
    return absl::InvalidArgumentError("params.deadline_ms: must be in [1, 3600000]");
  }
  o.deadline_ms = static_cast<int>(deadline);
  ASSIGN_OR_RETURN(o.failure_score, GetNumberParam(params, "failure_score", 0.0));
  return o;
}

RemoteReward::RemoteReward(RemoteRewardOptions options)
    : options_(std::move(options)),
      stub_(RewardService::NewStub(
          grpc::CreateChannel(options_.address, grpc::InsecureChannelCredentials()))) {}

std::vector<RewardOutput> RemoteReward::Score(absl::Span<const RewardInput> batch) const {
  std::vector<RewardOutput> outputs(batch.size());
  auto fail = [&](RewardOutput& out, std::string error) {
    out.score = options_.failure_score;
    out.error = std::move(error);
  };
  ScoreRequest request;
  std::vector<size_t> sent;  // batch index of request.items(k)
  for (size_t i = 0; i < batch.size(); ++i) {
    const RewardInput& in = batch[i];
    if (!IsValidUtf8(in.prompt) || !IsValidUtf8(in.completion) || !IsValidUtf8(in.data_source)) {
      fail(outputs[i], "invalid UTF-8 in prompt, completion or data_source");
      continue;
    }
    RewardItem* item = request.add_items();
    item->set_prompt(in.prompt);
    item->set_completion(in.completion);
    item->mutable_completion_ids()->Add(in.completion_ids.begin(), in.completion_ids.end());
    item->set_data_source(in.data_source);
    // Invalid UTF-8 inside JSON strings is replaced, so the text stays valid proto3 string data.
    if (!in.ground_truth.is_null()) {
      item->set_ground_truth_json(
          in.ground_truth.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    if (!in.extra.is_null()) {
      item->set_extra_json(in.extra.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    sent.push_back(i);
  }
  if (sent.empty()) return outputs;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(options_.deadline_ms));
  ScoreResponse response;
  const grpc::Status status = stub_->Score(&ctx, request, &response);
  std::string batch_error;
  if (!status.ok()) {
    batch_error =
        absl::StrCat("remote reward ", options_.address, ": ",
                     absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                     ": ", status.error_message());
  } else if (static_cast<size_t>(response.results_size()) != sent.size()) {
    batch_error = absl::StrCat("remote reward ", options_.address, ": returned ",
                               response.results_size(), " results for ", sent.size(), " items");
  }
  for (size_t k = 0; k < sent.size(); ++k) {
    RewardOutput& out = outputs[sent[k]];
    if (!batch_error.empty()) {
      fail(out, batch_error);
      continue;
    }
    const RewardResult& r = response.results(static_cast<int>(k));
    if (!r.error().empty()) {
      fail(out, r.error());
      continue;
    }
    out.score = r.score();
    for (const auto& [name, value] : r.components()) out.components[name] = value;
    out.info = r.info();
  }
  return outputs;
}

absl::Status RegisterRemoteReward(RewardRegistry* registry) {
  return registry->Register(
      "remote",
      [](const nlohmann::json& params) -> absl::StatusOr<std::unique_ptr<RewardFunction>> {
        ASSIGN_OR_RETURN(RemoteRewardOptions options, RemoteRewardOptions::FromJson(params));
        return std::make_unique<RemoteReward>(std::move(options));
      });
}

}  // namespace grpo
