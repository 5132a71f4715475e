#!/usr/bin/env python3
"""Build the Hugging Face reference fixtures in tests/fixtures/hf/.

Not run in CI: the fixtures it writes are committed, and the C++ tests read them. Rerun it only
to change or regenerate them (the output is deterministic for a given torch/transformers
version; see scripts/requirements-fixtures.txt for the versions used).

Usage (from the repository root):

    python3 -m venv /tmp/venv-fx
    /tmp/venv-fx/bin/pip install -r scripts/requirements-fixtures.txt
    /tmp/venv-fx/bin/python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]

What it writes, for each model NAME in {qwen3_moe, qwen2_moe, qwen3}:

    tests/fixtures/hf/NAME/config.json            as written by save_pretrained (transformers v5)
    tests/fixtures/hf/NAME/model.safetensors      (qwen3: model-0000i-of-0000n.safetensors shards
                                                   + model.safetensors.index.json)
    tests/fixtures/hf/NAME/logprobs.json          reference logprobs at temperature 1.0
    tests/fixtures/hf/qwen3_moe/logprobs_t07.json same layout, temperature 0.7

The models (all fp32, random weights with a fixed seed):

    qwen3_moe  Qwen3MoeConfig: vocab 128, hidden 32, 2 layers, 4 heads, 2 kv heads, head_dim 16
               (q width 64 != hidden 32), 8 experts top-2, moe_intermediate 24, norm_topk_prob,
               layer 1 dense via mlp_only_layers=[1] (intermediate 48), rope_theta 1e4, untied.
    qwen2_moe  Qwen2MoeConfig: vocab 128, hidden 32, 2 layers, 4 heads, 2 kv heads, head_dim 8
               (= hidden/heads, no head_dim key in config.json), 8 experts top-2,
               moe_intermediate 24, shared expert 40, norm_topk_prob False, q/k/v biases,
               tied embeddings (no lm_head.weight in the checkpoint).
    qwen3      Qwen3Config dense: vocab 128, hidden 32, 2 layers, 4 heads, 2 kv heads,
               head_dim 16, intermediate 48, untied; saved SHARDED (max_shard_size=40KB).

Weights are re-initialized with a larger scale than transformers' default so that logits are far
from uniform and routing is decisive: every matrix ~ N(0, 0.2^2), every bias ~ N(0, 0.2^2), every
RMSNorm weight ~ 1 + N(0, 0.2^2), except embed_tokens / lm_head ~ N(0, 0.5^2) and MoE router
weights (mlp.gate.weight) ~ N(0, 1).

logprobs.json layout (one JSON object):

    {
      "model": "qwen3_moe",
      "temperature": 1.0,
      "sequences": [[t_0, ..., t_n], ...],   # 4 sequences, 5/17/33/64 tokens, ids in [0, vocab)
      "logprobs":  [[lp_1, ..., lp_n], ...], # lp_i = log p(t_i | t_<i), length n = len(seq) - 1
      "entropy":   [[H_1, ..., H_n], ...],   # entropy of the distribution that predicts t_i
      "moe_layers": [0],                     # MoE layer indices, in order (MoE models only)
      "routing":   [seq][moe_layer][token][k],          # chosen experts (MoE models only)
      "routing_weights": [seq][moe_layer][token][k],    # their gate weights, after
                                                         # norm_topk_prob if set
      "meta": {...}                          # versions, implementations, tolerances seen
    }

  - Each sequence is run alone (batch 1, no padding, positions 0..n). lp and H come from
    log_softmax(logits.float() / temperature) at positions 0..n-1, gathered at the next token;
    H_i = -sum_v p_v log p_v for that same distribution. All values are fp32 numbers written as
    exact decimal float64.
  - routing[s][m][j] lists the top-k experts of token j (j = 0..len(seq)-1, i.e. ALL tokens of
    the sequence, including the last) in MoE layer moe_layers[m], in the order torch.topk returns
    them (descending router probability). Router probs are softmax(router_logits.float()).
  - meta.min_topk_logit_gap: the smallest gap, over all tokens and MoE layers, between the k-th
    and the (k+1)-th largest router LOGIT, so a C++ test knows how decisive the recorded routing
    is (the script refuses gaps below 1e-3).
  - meta.max_abs_diff_independent_forward: the largest logprob difference between transformers and
    a plain re-implementation of FORMATS.md A2 run on the saved tensors (independent_logits).
  - The reference numbers are computed with attn_implementation="eager" and
    experts_implementation="eager" (the plain per-expert loop). meta.max_abs_diff_vs_default
    records the largest logprob difference against transformers' defaults (sdpa, grouped_mm).
"""

import argparse
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig

SEQ_LENGTHS = [5, 17, 33, 64]
INIT_STD = 0.2
EMBED_STD = 0.5  # embed_tokens / lm_head: logits ~ N(0, 2.8^2), far from uniform
ROUTER_STD = 1.0  # router logits ~ N(0, 5.7^2): the top-k choice is decisive
MIN_TOPK_LOGIT_GAP = 1e-3  # refuse fixtures whose recorded routing is nearly a tie


def make_configs():
    common = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=256,
    )
    return {
        "qwen3_moe": Qwen3MoeConfig(
            **common,
            head_dim=16,
            intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            tie_word_embeddings=False,
        ),
        "qwen2_moe": Qwen2MoeConfig(
            **common,
            intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            tie_word_embeddings=True,
        ),
        "qwen3": Qwen3Config(
            **common,
            head_dim=16,
            intermediate_size=48,
            tie_word_embeddings=False,
        ),
    }


SEEDS = {"qwen3_moe": 1234, "qwen2_moe": 2345, "qwen3": 3456}


def reinit_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params are visited once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD
            if name.endswith("norm.weight"):  # input/post_attention/final/q/k RMSNorm weights
                p.copy_(1.0 + noise)
            elif name in ("model.embed_tokens.weight", "lm_head.weight"):
                p.copy_(noise * (EMBED_STD / INIT_STD))
            elif name.endswith("mlp.gate.weight") and p.shape[0] > 1:  # MoE router [E, hidden]
                p.copy_(noise * (ROUTER_STD / INIT_STD))
            else:
                p.copy_(noise)


def load(path, attn="eager", experts="eager"):
    kwargs = dict(dtype=torch.float32, attn_implementation=attn, output_loading_info=True)
    model, info = AutoModelForCausalLM.from_pretrained(path, experts_implementation=experts, **kwargs) \
        if experts else AutoModelForCausalLM.from_pretrained(path, **kwargs)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{path}: loading reported problems: {bad}")
    return model.eval()


def moe_layer_indices(config):
    if getattr(config, "num_experts", 0) in (0, None):
        return []
    return [
        i
        for i in range(config.num_hidden_layers)
        if i not in config.mlp_only_layers and (i + 1) % config.decoder_sparse_step == 0
    ]


@torch.no_grad()
def score(model, sequences, temperature, with_routing):
    out = {"logprobs": [], "entropy": [], "routing": [], "routing_weights": []}
    k = getattr(model.config, "num_experts_per_tok", 0)
    min_gap = math.inf
    for seq in sequences:
        ids = torch.tensor([seq], dtype=torch.long)
        res = model(input_ids=ids, output_router_logits=with_routing, use_cache=False)
        logp = torch.log_softmax(res.logits.float()[0, :-1] / temperature, dim=-1)
        nxt = ids[0, 1:]
        out["logprobs"].append(logp.gather(-1, nxt[:, None])[:, 0].tolist())
        out["entropy"].append((-(logp.exp() * logp).sum(-1)).tolist())
        if with_routing:
            seq_idx, seq_w = [], []
            for rl in res.router_logits:  # one [tokens, E] tensor per MoE layer
                probs = torch.softmax(rl.float(), dim=-1)
                w, idx = torch.topk(probs, k, dim=-1)
                srt = torch.sort(rl.float(), dim=-1, descending=True).values
                min_gap = min(min_gap, (srt[:, k - 1] - srt[:, k]).min().item())
                if model.config.norm_topk_prob:
                    w = w / w.sum(-1, keepdim=True)
                seq_idx.append(idx.tolist())
                seq_w.append(w.tolist())
            out["routing"].append(seq_idx)
            out["routing_weights"].append(seq_w)
    return out, min_gap


def _rms(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _swiglu(W, prefix, x):
    g = x @ W[prefix + "gate_proj.weight"].T
    u = x @ W[prefix + "up_proj.weight"].T
    return (torch.nn.functional.silu(g) * u) @ W[prefix + "down_proj.weight"].T


@torch.no_grad()
def independent_logits(path, tokens):
    """Forward pass written from FORMATS.md A2 directly on the saved tensors (no transformers
    modules): a check that the files plus the documented math reproduce transformers."""
    cfg = json.load(open(os.path.join(path, "config.json")))
    W = {}
    for fn in os.listdir(path):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(path, fn), "pt") as f:
                W.update({k: f.get_tensor(k) for k in f.keys()})
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    n_exp = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    qwen3 = cfg["model_type"] in ("qwen3", "qwen3_moe")
    T = len(tokens)
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()

    def rope(x):  # [heads, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = W["model.embed_tokens.weight"][torch.tensor(tokens)]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, W[p + "input_layernorm.weight"], eps)

        def proj(n):
            y = h @ W[p + f"self_attn.{n}_proj.weight"].T
            b = W.get(p + f"self_attn.{n}_proj.bias")
            return y if b is None else y + b

        q = proj("q").view(T, nh, hd)
        k = proj("k").view(T, nkv, hd)
        v = proj("v").view(T, nkv, hd).transpose(0, 1)
        if qwen3:
            q = _rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q.transpose(0, 1)), rope(k.transpose(0, 1))
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) * hd**-0.5 + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(T, nh * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = _rms(x, W[p + "post_attention_layernorm.weight"], eps)
        is_moe = (
            n_exp > 0
            and i not in (cfg.get("mlp_only_layers") or [])
            and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0
        )
        if not is_moe:
            x = x + _swiglu(W, p + "mlp.", h)
            continue
        probs = torch.softmax((h @ W[p + "mlp.gate.weight"].T).float(), -1)
        w, idx = torch.topk(probs, cfg["num_experts_per_tok"], -1)
        if cfg.get("norm_topk_prob"):
            w = w / w.sum(-1, keepdim=True)
        y = torch.zeros_like(h)
        for t in range(T):
            for j in range(idx.shape[1]):
                y[t] += w[t, j] * _swiglu(W, p + f"mlp.experts.{int(idx[t, j])}.", h[t : t + 1])[0]
        if p + "mlp.shared_expert_gate.weight" in W:
            gate = torch.sigmoid(h @ W[p + "mlp.shared_expert_gate.weight"].T)
            y = y + gate * _swiglu(W, p + "mlp.shared_expert.", h)
        x = x + y
    x = _rms(x, W["model.norm.weight"], eps)
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def max_abs_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def tensor_listing(path):
    rows = []
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(path, fn), "pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    rows.append((key, sl.get_dtype(), sl.get_shape(), fn))
    return sorted(rows)


def build(name, config, out_root):
    path = os.path.join(out_root, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    torch.manual_seed(SEEDS[name])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reinit_(model, SEEDS[name])
    save_kwargs = dict(safe_serialization=True)
    if name == "qwen3":
        save_kwargs["max_shard_size"] = "40KB"
    model.save_pretrained(path, **save_kwargs)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)  # only default sampling settings; the C++ side does not read it

    # Reference numbers come from the checkpoint as saved, reloaded.
    ref = load(path)
    # The reloaded model must be bit-identical to the one we built.
    sd0 = model.state_dict()
    for key, t in ref.state_dict().items():
        if not torch.equal(t, sd0[key]):
            raise SystemExit(f"{name}: {key} changed through save/load")

    g = torch.Generator().manual_seed(SEEDS[name] + 1)
    sequences = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in SEQ_LENGTHS]
    moe_layers = moe_layer_indices(ref.config)
    with_routing = bool(moe_layers)

    default_model = load(path, attn=None, experts=None)
    impl = {
        "reference_attn_implementation": ref.config._attn_implementation,
        "reference_experts_implementation": getattr(ref.config, "_experts_implementation", None),
        "default_attn_implementation": default_model.config._attn_implementation,
        "default_experts_implementation": getattr(default_model.config, "_experts_implementation", None),
    }

    indep = 0.0
    for seq, lp in zip(sequences, score(ref, sequences, 1.0, False)[0]["logprobs"]):
        logp = torch.log_softmax(independent_logits(path, seq)[:-1], -1)
        mine = logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].tolist()
        indep = max(indep, max_abs_diff([mine], [lp]))
    if indep > 1e-4:
        raise SystemExit(f"{name}: independent forward differs from transformers by {indep:.2e}")
    impl["max_abs_diff_independent_forward"] = indep

    temps = [("logprobs.json", 1.0)]
    if name == "qwen3_moe":
        temps.append(("logprobs_t07.json", 0.7))
    for fn, temp in temps:
        res, min_gap = score(ref, sequences, temp, with_routing)
        dres, _ = score(default_model, sequences, temp, with_routing)
        doc = {
            "model": name,
            "temperature": temp,
            "sequences": sequences,
            "logprobs": res["logprobs"],
            "entropy": res["entropy"],
        }
        if with_routing:
            if min_gap < MIN_TOPK_LOGIT_GAP:
                raise SystemExit(f"{name}: routing nearly tied (logit gap {min_gap:.2e}); change the seed")
            if dres["routing"] != res["routing"]:
                raise SystemExit(f"{name}: routing differs between eager and default implementations")
            doc["moe_layers"] = moe_layers
            doc["routing"] = res["routing"]
            doc["routing_weights"] = res["routing_weights"]
        doc["meta"] = {
            "generator": "scripts/make_hf_fixtures.py",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "seed": SEEDS[name],
            "init_std": {"default": INIT_STD, "embed_lm_head": EMBED_STD, "router": ROUTER_STD},
            **impl,
            "max_abs_diff_vs_default": max_abs_diff(res["logprobs"], dres["logprobs"]),
            "min_topk_logit_gap": min_gap if with_routing else None,
        }
        with open(os.path.join(path, fn), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(
            f"{name} T={temp}: mean lp {sum(map(sum, res['logprobs'])) / sum(map(len, res['logprobs'])):.3f}"
            f"  mean H {sum(map(sum, res['entropy'])) / sum(map(len, res['entropy'])):.3f}"
            f" (uniform {math.log(config.vocab_size):.3f})"
            f"  diff vs default {doc['meta']['max_abs_diff_vs_default']:.2e}"
            + (f"  min top-k logit gap {min_gap:.4f}" if with_routing else "")
            + f"  independent forward diff {indep:.2e}"
        )

    files = sorted(os.listdir(path))
    print(f"{name}: files {files}")
    for key, dtype, shape, fn in tensor_listing(path):
        print(f"    {key:50s} {dtype} {list(shape)}" + (f"  [{fn}]" if name == "qwen3" else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
    ap.add_argument("--only", nargs="*", help="build only these models")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reduction order
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}")
    os.makedirs(args.out, exist_ok=True)
    for name, cfg in make_configs().items():
        if args.only and name not in args.only:
            continue
        build(name, cfg, args.out)
    if not args.only:
        shard_index = os.path.join(args.out, "qwen3", "model.safetensors.index.json")
        with open(shard_index) as f:
            n_shards = len(set(json.load(f)["weight_map"].values()))
        if n_shards < 2:
            raise SystemExit(f"qwen3 fixture has {n_shards} shard(s); lower max_shard_size")


if __name__ == "__main__":
    main()
