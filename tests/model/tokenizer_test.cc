// Tests for model/tokenizer.h: id-for-id parity with HF `tokenizers` on the fixtures from
// scripts/make_tokenizer_fixtures.py (Qwen2, Llama-3, GPT-2 styles and the toy tokenizer),
// decode round trips, errors for unsupported components and malformed files, invalid UTF-8,
// batch encoding and skip_special_tokens.
#include "model/tokenizer.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "nlohmann/json.hpp"

namespace grpo {
namespace {

using nlohmann::json;

const std::string kFixtures = std::string(GRPO_SOURCE_DIR) + "/tests/fixtures/tokenizer/";
const std::string kToyPath = std::string(GRPO_SOURCE_DIR) + "/configs/toy_tokenizer.json";

std::string FixturePath(const std::string& name) {
  return name == "toy" ? kToyPath : kFixtures + name + ".json";
}

std::unique_ptr<Tokenizer> Load(const std::string& name) {
  auto tok = Tokenizer::FromFile(FixturePath(name));
  INFO(tok.status().ToString());
  REQUIRE(tok.ok());
  return std::move(*tok);
}

std::vector<json> ReadCases() {
  std::ifstream in(kFixtures + "cases.jsonl");
  REQUIRE(in.good());
  std::vector<json> cases;
  std::string line;
  while (std::getline(in, line)) cases.push_back(json::parse(line));
  return cases;
}

// The first index where a and b differ, for failure messages.
std::string FirstMismatch(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return absl::StrCat("sizes ", a.size(), " vs ", b.size(), ", first difference at ", i, ": ",
                      i < a.size() ? std::to_string(a[i]) : "end", " vs ",
                      i < b.size() ? std::to_string(b[i]) : "end");
}

TEST_CASE("Tokenizer matches HF tokenizers id for id on every fixture string", "[tokenizer]") {
  const std::vector<json> cases = ReadCases();
  REQUIRE(cases.size() > 150);
  std::map<std::string, std::unique_ptr<Tokenizer>> toks;
  std::map<std::string, int> num_checked;
  int num_identity = 0;
  for (const json& c : cases) {
    const std::string name = c["tokenizer"].get<std::string>();
    if (!toks.count(name)) toks[name] = Load(name);
    const Tokenizer& tok = *toks[name];
    const std::string text = c["text"].get<std::string>();
    INFO(name << ": " << c["text"].dump());
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto want_plain = c["ids_plain"].get<std::vector<int32_t>>();
    auto ids = tok.Encode(text);
    auto plain = tok.Encode(text, /*add_special_tokens=*/false);
    REQUIRE(ids.ok());
    REQUIRE(plain.ok());
    INFO("ids: " << FirstMismatch(*ids, want) << "; plain: " << FirstMismatch(*plain, want_plain));
    CHECK(*ids == want);
    CHECK(*plain == want_plain);
    auto decoded = tok.Decode(*ids);
    auto decoded_skip = tok.Decode(*ids, /*skip_special_tokens=*/true);
    REQUIRE(decoded.ok());
    REQUIRE(decoded_skip.ok());
    CHECK(*decoded == c["decoded"].get<std::string>());
    CHECK(*decoded_skip == c["decoded_skip"].get<std::string>());
    // decode(encode(x)) == x, except where the tokenizer changes the text on purpose: NFC
    // (qwen2, for decomposed input), the GPT-2 style's added prefix space and llama3's
    // lstrip/rstrip <|mask|>, which swallows the spaces around it.
    auto round = tok.Decode(*plain);
    REQUIRE(round.ok());
    const bool changes_text = (name == "qwen2" && c["decoded"].get<std::string>() != text) ||
                              (name == "gpt2" && !text.empty() && text[0] != ' ') ||
                              (name == "llama3" && text.find("<|mask|>") != std::string::npos);
    if (!changes_text) {
      CHECK(*round == text);
      ++num_identity;
    }
    ++num_checked[name];
  }
  for (const auto& [name, n] : num_checked) {
    WARN("tokenizer parity: " << name << ": " << n << " strings checked against HF");
  }
  WARN("decode(encode(x)) == x checked on " << num_identity << " strings");
  REQUIRE(num_checked.size() == 4);
}

TEST_CASE("Tokenizer batch encoding equals sequential encoding", "[tokenizer]") {
  auto tok = Load("qwen2");
  std::vector<std::string> texts;
  for (const json& c : ReadCases()) texts.push_back(c["text"].get<std::string>());
  for (int rep = 0; rep < 3; ++rep) texts.insert(texts.end(), texts.begin(), texts.end());
  auto batch = tok->EncodeBatch(texts, true, 4);
  REQUIRE(batch.ok());
  REQUIRE(batch->size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto one = tok->Encode(texts[i]);
    REQUIRE(one.ok());
    REQUIRE((*batch)[i] == *one);
  }
  texts[7] = "bad \xff byte";
  auto bad = tok->EncodeBatch(texts, true, 2);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("text 7") != std::string::npos);
}

TEST_CASE("Tokenizer skip_special_tokens drops only special added tokens", "[tokenizer]") {
  auto tok = Load("qwen2");
  auto ids = tok->Encode("<|im_start|>user\nhi<|im_end|><think>x</think>");
  REQUIRE(ids.ok());
  REQUIRE(ids->front() == *tok->TokenToId("<|im_start|>"));
  CHECK(tok->IsSpecial(ids->front()));
  CHECK_FALSE(tok->IsSpecial(*tok->TokenToId("<think>")));
  CHECK(*tok->Decode(*ids, true) == "user\nhi<think>x</think>");
  CHECK(*tok->Decode(*ids, false) == "<|im_start|>user\nhi<|im_end|><think>x</think>");
  auto unknown = tok->Decode({static_cast<int32_t>(tok->vocab_size())});
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().message().find("not in the vocabulary") != std::string::npos);
}

TEST_CASE("Tokenizer rejects invalid UTF-8 naming the byte offset", "[tokenizer]") {
  auto tok = Load("llama3");
  for (const auto& [text, offset] :
       std::vector<std::pair<std::string, int>>{{"abc\xff", 3},
                                                {"ab\xc3", 2},
                                                {"\xed\xa0\x80", 0},
                                                {"x\xc0\xaf", 1},
                                                {"ok \xf4\x90\x80\x80", 3}}) {
    auto r = tok->Encode(text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message() == absl::StrCat("text is not valid UTF-8 at byte offset ", offset));
  }
  // Decoding bytes that do not form UTF-8 gives U+FFFD, as HF's from_utf8_lossy does.
  auto half = tok->Encode("é", false);
  REQUIRE(half.ok());
  if (half->size() == 2) CHECK(*tok->Decode({(*half)[0]}) == "\xEF\xBF\xBD");
}

TEST_CASE("Tokenizer toy tokenizer: committed file, byte ids, round trip", "[tokenizer]") {
  const std::string dir = std::string(GRPO_BINARY_DIR) + "/test_tmp/tokenizer";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/toy_tokenizer.json";
  REQUIRE(WriteToyTokenizer(path).ok());
  auto written = ReadFile(path), committed = ReadFile(kToyPath);
  REQUIRE(written.ok());
  REQUIRE(committed.ok());
  CHECK(*written == *committed);  // regenerate configs/toy_tokenizer.json if this fails
  auto tok = Tokenizer::FromFile(path);
  REQUIRE(tok.ok());
  CHECK((*tok)->vocab_size() == 263);
  const std::string text =
      "<|im_start|>user\n(12+3)*4=?<|im_end|><think>ok</think><answer>60</answer>";
  auto ids = (*tok)->Encode(text);
  REQUIRE(ids.ok());
  CHECK((*ids)[0] == 257);
  CHECK((*ids)[1] == 'u');
  CHECK(ids->back() == 262);
  CHECK(*(*tok)->Decode(*ids) == text);
  CHECK(*(*tok)->Decode(*ids, true) == "user\n(12+3)*4=?<think>ok</think><answer>60</answer>");
}

TEST_CASE("Tokenizer Split with a String pattern and Removed behavior", "[tokenizer]") {
  // The toy vocab is bytes, so ids are the bytes left after removing the spaces.
  json j = ToyTokenizerJson();
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  auto tok = Tokenizer::FromJson(j, "split.json");
  INFO(tok.status().ToString());
  REQUIRE(tok.ok());
  auto ids = (*tok)->Encode(" a b  c.d ");
  REQUIRE(ids.ok());
  CHECK(*ids == std::vector<int32_t>{'a', 'b', 'c', '.', 'd'});
}

// tokenizer.json text with one part replaced, for error tests.
json ToyWith(const std::string& key, const json& value) {
  json j = ToyTokenizerJson();
  j[key] = value;
  return j;
}

void ExpectError(const json& j, const std::string& needle) {
  auto tok = Tokenizer::FromJson(j, "test.json");
  REQUIRE_FALSE(tok.ok());
  const std::string msg(tok.status().message());
  INFO(msg);
  CHECK(msg.find("test.json") != std::string::npos);
  CHECK(msg.find(needle) != std::string::npos);
}

TEST_CASE("Tokenizer names unsupported components and the file", "[tokenizer]") {
  ExpectError(ToyWith("normalizer", {{"type", "Lowercase"}}), "normalizer type \"Lowercase\"");
  ExpectError(ToyWith("pre_tokenizer", {{"type", "Whitespace"}}),
              "pre_tokenizer type \"Whitespace\"");
  ExpectError(ToyWith("pre_tokenizer", nullptr), "pre_tokenizer null");
  ExpectError(ToyWith("pre_tokenizer", json::parse(R"({"type": "Split", "pattern":
                  {"Regex": "\\s"}, "behavior": "Isolated", "invert": false})")),
              "must end with exactly one ByteLevel");
  ExpectError(ToyWith("pre_tokenizer", json::parse(R"({"type": "Sequence", "pretokenizers": [
                  {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "MergedWithPrevious",
                   "invert": false}, {"type": "ByteLevel"}]})")),
              "Split behavior \"MergedWithPrevious\"");
  ExpectError(ToyWith("decoder", {{"type", "WordPiece"}}), "decoder WordPiece");
  ExpectError(ToyWith("post_processor", {{"type", "BertProcessing"}}),
              "post_processor type \"BertProcessing\"");
  ExpectError(ToyWith("truncation", {{"max_length", 5}}), "truncation");
  json j = ToyTokenizerJson();
  j["model"]["type"] = "WordPiece";
  ExpectError(j, "model type \"WordPiece\"");
  j = ToyTokenizerJson();
  j["model"]["byte_fallback"] = true;
  ExpectError(j, "byte_fallback");
  j = ToyTokenizerJson();
  j["added_tokens"][0]["single_word"] = true;
  ExpectError(j, "single_word");
}

TEST_CASE("Tokenizer rejects malformed tokenizer.json", "[tokenizer]") {
  json j = ToyTokenizerJson();
  j["model"]["merges"] = json::array({"a b c"});
  ExpectError(j, "merges[0]");
  j["model"]["merges"] = json::array({json::array({"Ġ", "zz"})});
  ExpectError(j, "not in the vocab");
  j = ToyTokenizerJson();
  j["model"]["vocab"]["x"] = "seven";
  ExpectError(j, "vocab[\"x\"]");
  j = ToyTokenizerJson();
  j.erase("model");
  ExpectError(j, "no \"model\"");
  ExpectError(ToyWith("pre_tokenizer", json::parse(R"({"type": "Split", "pattern":
                  {"Regex": "(unclosed"}, "behavior": "Isolated"})")),
              "does not compile");
  ExpectError(json::array(), "must be an object");

  const std::string dir = std::string(GRPO_BINARY_DIR) + "/test_tmp/tokenizer";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/broken.json") << "{\"model\": ";
  auto broken = Tokenizer::FromFile(dir + "/broken.json");
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().message().find("broken.json") != std::string::npos);
  CHECK_FALSE(Tokenizer::FromFile(dir + "/missing.json").ok());
}

}  // namespace
}  // namespace grpo
