#!/usr/bin/env python3
"""Builds the tokenizer parity fixtures in tests/fixtures/tokenizer/ with HF `tokenizers`.

Trains three small byte-level BPE tokenizers on the text below and records HF's encodings of a
varied corpus, which tests/model/tokenizer_test.cc must reproduce id for id:
  qwen2.json   Qwen2/Qwen3 style: NFC, Sequence[Split(Qwen2 regex, Isolated), ByteLevel(no regex)],
               <|endoftext|> <|im_start|> <|im_end|> special, <think> </think> not special,
               a normalized added token "nai\\u0308ve" (decomposed; matched after NFC), an
               added token with a space ("<tool call>", decoded raw).
  llama3.json  Llama-3 style: no normalizer, \\p{N}{1,3} regex, ignore_merges, <|begin_of_text|>
               prepended by TemplateProcessing, an lstrip/rstrip special token <|mask|>.
  gpt2.json    ByteLevel(add_prefix_space, use_regex=GPT-2 regex) alone, merges in the legacy
               "a b" string form.
It also checks configs/toy_tokenizer.json (written by grpo's WriteToyTokenizer) loads in HF and
records its encodings. Output: <name>.json files and cases.jsonl, one line per (tokenizer, text):
{"tokenizer", "text", "ids" (add_special_tokens=True), "ids_plain" (False), "decoded"
(decode(ids)), "decoded_skip" (decode(ids, skip_special_tokens=True))}.

Usage: python scripts/make_tokenizer_fixtures.py   (needs `pip install tokenizers`; 0.23 used)
"""
import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's a sunny day, isn't it? We'll see.",
    "In reinforcement learning, the policy is updated with group-relative advantages.",
    "def encode(text):\n    return [vocab[t] for t in text.split()]  # simple\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }\r\n",
    "Mixture-of-experts models route each token to the top-k experts by router score.",
    "数学是科学的语言。我们今天学习分数和小数。",
    "日本語のテキストも少し含めます。東京は大きい都市です。",
    "Café crème, naïve façade, résumé, déjà vu, Ærøskøbing, Straße.",
    "Emoji: 😀 😃 🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "Numbers: 12345 3.14159 2,718 1e-9 0x1F 100% $42.00",
    "Привет, мир! Как дела? Γειά σου κόσμε. مرحبا بالعالم. नमस्ते दुनिया",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "NEL\u0085\u0085 lines \u0085\u0085word and \u0085\u0085\u0085 x \u0085y \u0085\u0085",
] * 3
TRAIN_TEXT.append(open(__file__, encoding="utf-8").read())

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   leading spaces and trailing spaces   ",
    "a  b   c    d     e",
    "word\n\nnext paragraph\n\n\n",
    "line one\r\nline two\r\n\r\nline four",
    "\ttabbed\tcolumns\t\there",
    "DON'T stop, it'S fine, we'Ll see, I'm HERE, you'VE, they'RE, he'D",
    "don't won't can't shan't y'all",
    "12345678901234567890 and 3.14159265 and 1,000,000",
    "x1 = 42; y2 = x1 * 1000 - 7",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n    pass\n",
    "int main() {\n  printf(\"%d\\n\", 1 + 2);\n  return 0;\n}\n",
    "    indented code\n        more indented",
    "数学是科学的语言。",
    "日本語のテキスト、カタカナ、ひらがな。",
    "한국어 텍스트입니다",
    "\u1100\u1161\u11a8 decomposed hangul",
    "Emoji 😀🎉 and ZWJ 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 and skin 👍🏽",
    "caf\u00e9 vs cafe\u0301 (decomposed e + U+0301)",
    "nai\u0308ve and naïve and Naïve",
    "A\u030a\u0301 stacked combining marks e\u0301\u0302\u0303",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. नमस्ते दुनिया",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning here\n</think>\n\nanswer",
    "call <tool call>{\"x\": 1}<tool call> now",
    "text<|endoftext|>more<|endoftext|><|endoftext|>",
    "partial <|im_start and <|im_end| and <| not tokens",
    "a <|mask|> b  <|mask|>  c<|mask|>d",
    "<|begin_of_text|>explicit bos",
    "NEL\u0085char and NBSP\u00a0char and ideographic\u3000space",
    "a \u0085b x\u0085\u0085\u0085y \u0085\u0085word \u0085\u0085 \u0085\u0085\n\u0085",
    "Kelvin \u212a and long s 'ſ and 'S",
    "mixed1234abc5678 numbers99and_letters",
    "!!!??? ... --- *** ### @@@",
    "trailing newline\n",
    "\n\n\n",
    "   ",
    "spaces before words:     five and  two",
    "x" * 300,
    " " * 600 + "end",
    "\u00a0\u00a0\u2003 unicode spaces \u2009 thin",
    "full-width ＡＢＣ１２３ and superscript ² ³ ½",
    "math: ∀x∈ℝ, ∑ᵢ xᵢ² ≥ 0 → √",
    "control \u0001\u0002\u007f chars",
    "zero width \u200b joiner \u200d nonjoiner \u200c",
    "emoji only 🙂",
    "URL https://example.com/path?q=1&r=2#frag",
    "JSON {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
]


def trainer(vocab_size):
    return trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def qwen2():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer(1500))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False),
                    AddedToken("nai\u0308ve", special=False, normalized=True),
                    # A space is not in the byte-level table: decoded as raw UTF-8.
                    AddedToken("<tool call>", special=False, normalized=False)])
    return tok


def llama3():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN_TEXT, trainer(1200))
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    # Whole words in the vocab with no merges to build them, as in Llama-3's vocab: only
    # ignore_merges finds them.
    vocab = j["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    for extra in ["\u0120GRPOtokenizer", "\u0120MoEparity"]:
        assert extra not in vocab
        vocab[extra] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True, normalized=False),
                            AddedToken("<|end_of_text|>", special=True, normalized=False),
                            AddedToken("<|mask|>", special=True, normalized=False,
                                       lstrip=True, rstrip=True)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok


def gpt2():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN_TEXT, trainer(800))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tok


def ignore_merges_cases(tok, limit=6):
    """Vocab tokens whose text BPE would split when ignore_merges is off: they test the flag."""
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = False
    plain = Tokenizer.from_str(json.dumps(j))
    found = []
    for token, tid in sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
        text = tok.decode([tid])
        if "\ufffd" in text:
            continue
        if (tok.encode(text, add_special_tokens=False).ids !=
                plain.encode(text, add_special_tokens=False).ids):
            found.append(text)
        if len(found) == limit:
            break
    return found


def save(tok, name, legacy_merges=False):
    j = json.loads(tok.to_str())
    if legacy_merges:
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    text = json.dumps(j, ensure_ascii=False, separators=(",", ":")) + "\n"
    path = os.path.join(OUT, name + ".json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Tokenizer.from_file(path)  # encode with the file as saved, legacy merges included


def main():
    os.makedirs(OUT, exist_ok=True)
    llama = save(llama3(), "llama3")
    extra = ignore_merges_cases(llama)
    print(f"{len(extra)} strings that need ignore_merges: {extra}")
    CORPUS.append("the GRPOtokenizer MoEparity 8642 " + " ".join(extra))
    CORPUS.extend(extra)
    toks = {"qwen2": save(qwen2(), "qwen2"), "llama3": llama,
            "gpt2": save(gpt2(), "gpt2", legacy_merges=True),
            "toy": Tokenizer.from_file(os.path.join(ROOT, "configs", "toy_tokenizer.json"))}
    toy_text = ["<|im_start|>user\n12+34=?<|im_end|>\n<think>\n1+2</think><answer>46</answer>",
                "(7 * 8) / 2 - 1 = 27", "héllo 😀"]
    lines = []
    for name, tok in toks.items():
        for text in CORPUS + (toy_text if name == "toy" else []):
            ids = tok.encode(text).ids
            lines.append({"tokenizer": name, "text": text, "ids": ids,
                          "ids_plain": tok.encode(text, add_special_tokens=False).ids,
                          "decoded": tok.decode(ids, skip_special_tokens=False),
                          "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    with open(os.path.join(OUT, "cases.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {len(lines)} cases for {len(toks)} tokenizers to {OUT}")


if __name__ == "__main__":
    main()
