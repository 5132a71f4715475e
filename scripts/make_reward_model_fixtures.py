#!/usr/bin/env python3
"""Build the reward-model reference fixtures in tests/fixtures/reward_model/.

Not run in CI: the fixtures are committed and tests/reward/model_reward_test.cc reads them. Rerun
only to change them (deterministic for the torch/transformers versions in
scripts/requirements-fixtures.txt).

Usage (from the repository root):

    /tmp/venv-fx/bin/python scripts/make_reward_model_fixtures.py [--out tests/fixtures/reward_model]

Models (fp32, random weights with fixed seeds, Hugging Face sequence-classification layout: the
backbone's tensors plus score.weight [num_labels, hidden], no lm_head):

    qwen3      Qwen3ForSequenceClassification: vocab 272, hidden 16, 2 layers, 2 heads, 1 kv head,
               head_dim 8, intermediate 32, num_labels 1, pad_token_id 256.
    qwen2      Qwen2ForSequenceClassification: same sizes (q/k/v biases, no q/k norm), num_labels 2
               (the C++ test reads both labels), pad_token_id 256.
    qwen3_moe  Qwen3MoeForSequenceClassification: as qwen3 plus 4 experts top-2,
               moe_intermediate 16, norm_topk_prob; num_labels 1, pad_token_id 256.
    llama      LlamaForSequenceClassification: same sizes (head_dim 8, no biases, no q/k norm),
               num_labels 1, pad_token_id 256.

The vocabulary covers the toy tokenizer (configs/toy_tokenizer.json, copied into each directory as
tokenizer.json; 263 ids, <|endoftext|> = 256 is the pad token as in Qwen's own tokenizers).

Each directory gets config.json, model.safetensors, tokenizer.json and scores.json:

    {"model": NAME, "num_labels": L, "pad_token_id": 256,
     "sequences": [[ids...], ...],     # random ids; some end in pad tokens, one is all pad
     "scores": [[logit_0..logit_L-1], ...],   # transformers, each sequence alone (batch 1)
     "items": [{"prompt", "completion", "text", "ids", "scores"}],  # end-to-end text items:
                                       # text = ChatML user turn + assistant turn (below),
                                       # ids = HF tokenizers on tokenizer.json, scores as above
     "meta": {...}}

Text items are rendered as a Qwen ChatML conversation, the way our `model` reward renders them with
{"template": {"name": "chatml"}} and its default completion suffix:
    "<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{completion}<|im_end|>\\n"

meta.max_abs_diff_padded_batch: the largest score difference between running each sequence alone
and running all of them as ONE right-padded batch with an attention mask (transformers picks the
last non-pad token per row; the C++ side packs without padding). Both must agree.
"""

import argparse
import json
import os
import shutil
import sys

import tokenizers
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

PAD = 256
INIT_STD = 0.3
EMBED_STD = 0.5
SEEDS = {"qwen3": 4101, "qwen2": 4202, "qwen3_moe": 4303, "llama": 4404}
SEQ_LENGTHS = [1, 4, 11, 23, 40]
TEXT_ITEMS = [
    ("What is 2+3?", "<think>2+3=5</think><answer>5</answer>"),
    ("What is 2+3?", "<think>guess</think><answer>7</answer>"),
    ("Name a prime.", "7"),
    ("", "empty prompt, some completion"),
]


def make_configs():
    common = dict(
        vocab_size=272,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=128,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    return {
        "qwen3": Qwen3Config(**common, head_dim=8, num_labels=1),
        "qwen2": Qwen2Config(**common, num_labels=2),
        "qwen3_moe": Qwen3MoeConfig(
            **common,
            head_dim=8,
            num_labels=1,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
        "llama": LlamaConfig(**common, head_dim=8, num_labels=1),
    }


def reinit_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(noise * (EMBED_STD / INIT_STD))
            elif name.endswith("mlp.gate.weight"):  # MoE router: decisive top-k
                p.copy_(noise * (1.0 / INIT_STD))
            else:
                p.copy_(noise)


def load(path):
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{path}: loading reported problems: {bad}")
    return model.eval()


@torch.no_grad()
def score_alone(model, sequences):
    return [model(input_ids=torch.tensor([s])).logits[0].tolist() for s in sequences]


@torch.no_grad()
def score_padded(model, sequences):
    n = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), n), PAD, dtype=torch.long)
    mask = torch.zeros((len(sequences), n), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return model(input_ids=ids, attention_mask=mask).logits.tolist()


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def build(name, config, out_root, tok_path):
    path = os.path.join(out_root, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    torch.manual_seed(SEEDS[name])
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    reinit_(model, SEEDS[name])
    model.save_pretrained(path, safe_serialization=True)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    shutil.copy(tok_path, os.path.join(path, "tokenizer.json"))
    ref = load(path)

    g = torch.Generator().manual_seed(SEEDS[name] + 1)
    seqs = [torch.randint(0, 263, (n,), generator=g).tolist() for n in SEQ_LENGTHS]
    seqs = [[t if t != PAD else PAD + 1 for t in s] for s in seqs]  # pads only where placed below
    seqs.append(seqs[3][:9] + [PAD, PAD])  # trailing pads: scored at the last non-pad token
    seqs.append(seqs[2][:5] + [PAD] + seqs[2][5:])  # an inner pad token is not padding
    seqs.append([PAD, PAD, PAD])  # all pad: transformers' argmax picks position 0
    scores = score_alone(ref, seqs)
    # The padded batch cannot hold the all-pad row meaningfully (mask would be all zero).
    padded = score_padded(ref, seqs[:-1])

    tok = tokenizers.Tokenizer.from_file(tok_path)
    items = []
    for prompt, completion in TEXT_ITEMS:
        text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{completion}<|im_end|>\n"
        ids = tok.encode(text, add_special_tokens=True).ids
        items.append({"prompt": prompt, "completion": completion, "text": text, "ids": ids,
                      "scores": score_alone(ref, [ids])[0]})

    doc = {
        "model": name,
        "num_labels": config.num_labels,
        "pad_token_id": PAD,
        "sequences": seqs,
        "scores": scores,
        "items": items,
        "meta": {
            "generator": "scripts/make_reward_model_fixtures.py",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "seed": SEEDS[name],
            "architecture": type(ref).__name__,
            "max_abs_diff_padded_batch": max_diff(scores[:-1], padded),
        },
    }
    if doc["meta"]["max_abs_diff_padded_batch"] > 1e-5:
        raise SystemExit(f"{name}: padded batch differs from single runs")
    with open(os.path.join(path, "scores.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    spread = [s[0] for s in scores]
    print(f"{name}: {type(ref).__name__}, {sum(p.numel() for p in ref.parameters())} params, "
          f"scores[0] in [{min(spread):.3f}, {max(spread):.3f}], "
          f"padded-batch diff {doc['meta']['max_abs_diff_padded_batch']:.2e}, files {sorted(os.listdir(path))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "reward_model"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}")
    os.makedirs(args.out, exist_ok=True)
    for name, cfg in make_configs().items():
        build(name, cfg, args.out, os.path.join(root, "configs", "toy_tokenizer.json"))


if __name__ == "__main__":
    main()
