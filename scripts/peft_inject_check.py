#!/usr/bin/env python3
"""PEFT reads loractl adapters: a check that needs PyTorch and peft but not transformers' models.

For each ADAPTER folder (written by `loractl train`, in PEFT's LoRA, DoRA or VeRA format):

1. config: PEFT parses adapter_config.json into its own config class (LoraConfig, VeraConfig).
2. load:   PEFT's tuner (LoraModel, VeraModel) is injected into a plain PyTorch Llama built here
           from the base folder, laid out as PeftModel lays it out (base_model.model.<HF path>),
           and set_peft_model_state_dict loads adapter_model.safetensors: no unexpected key, no
           adapter tensor left unloaded, every tensor equal to the file's.
3. logits: PEFT's adapted forward equals the forward of the folder that `loractl merge` wrote
           for that adapter (float32, max |diff| / max |ref| <= --rtol).

The Llama here is checked first against the base's reference logits when --reference is given
(stories260K's llama2.c logits.jsonl).

    python3 scripts/peft_inject_check.py --base models/tiny-arith ADAPTER:MERGED [ADAPTER:MERGED ...]
"""

import argparse
import json
import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F


class Llama(nn.Module):
    """A Llama-family decoder with HF module paths (model.layers.N.self_attn.q_proj, ...)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        H, F_, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
        hd = c.get("head_dim") or H // nh
        self.nh, self.nkv, self.hd = nh, nkv, hd
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], H)
        self.model.layers = nn.ModuleList()
        for _ in range(L):
            b = nn.Module()
            b.input_layernorm = nn.Parameter(torch.ones(H))
            b.post_attention_layernorm = nn.Parameter(torch.ones(H))
            b.self_attn = nn.Module()
            b.self_attn.q_proj = nn.Linear(H, nh * hd, bias=False)
            b.self_attn.k_proj = nn.Linear(H, nkv * hd, bias=False)
            b.self_attn.v_proj = nn.Linear(H, nkv * hd, bias=False)
            b.self_attn.o_proj = nn.Linear(nh * hd, H, bias=False)
            b.mlp = nn.Module()
            b.mlp.gate_proj = nn.Linear(H, F_, bias=False)
            b.mlp.up_proj = nn.Linear(H, F_, bias=False)
            b.mlp.down_proj = nn.Linear(F_, H, bias=False)
            self.model.layers.append(b)
        self.model.norm = nn.Parameter(torch.ones(H))
        self.lm_head = nn.Linear(H, c["vocab_size"], bias=False)

    def load(self, folder):
        sd = {}
        from safetensors.torch import load_file

        for f in sorted(os.listdir(folder)):
            if f.endswith(".safetensors"):
                sd.update(load_file(os.path.join(folder, f)))
        own = {}
        for k, v in sd.items():
            k = k.replace("input_layernorm.weight", "input_layernorm").replace("post_attention_layernorm.weight", "post_attention_layernorm")
            k = "model.norm" if k == "model.norm.weight" else k
            own[k] = v.float()
        if "lm_head.weight" not in own:
            own["lm_head.weight"] = own["model.embed_tokens.weight"]
        missing, unexpected = self.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise SystemExit(f"{folder}: weights do not fit the Llama here: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return self

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]) * w

    def forward(self, ids):
        T = ids.shape[1]
        x = self.model.embed_tokens(ids)
        inv = 1.0 / (self.c.get("rope_theta", 10000.0) ** (torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd))
        ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()

        def rope(t):  # (B, heads, T, hd), HF's rotate_half layout
            a, b = t[..., : self.hd // 2], t[..., self.hd // 2 :]
            return t * cos + torch.cat([-b, a], -1) * sin

        mask = torch.full((T, T), float("-inf")).triu(1)
        for b in self.model.layers:
            h = self.rms(x, b.input_layernorm)
            B = h.shape[0]
            q = b.self_attn.q_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
            k = b.self_attn.k_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
            v = b.self_attn.v_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
            q, k = rope(q), rope(k)
            rep = self.nh // self.nkv
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
            o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
            x = x + b.self_attn.o_proj(o)
            h = self.rms(x, b.post_attention_layernorm)
            x = x + b.mlp.down_proj(F.silu(b.mlp.gate_proj(h)) * b.mlp.up_proj(h))
        return self.lm_head(self.rms(x, self.model.norm))


def build(folder):
    c = json.load(open(os.path.join(folder, "config.json")))
    return Llama(c).load(folder).eval(), c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--reference", help="logits.jsonl of the base (llama2.c's, for stories260K)")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("pairs", nargs="+", metavar="ADAPTER:MERGED")
    a = ap.parse_args()

    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peft_fidelity import compare_load

    torch.manual_seed(0)
    failures = []
    base, c = build(a.base)
    if a.reference:
        worst = 0.0
        with torch.no_grad():
            for line in open(a.reference):
                r = json.loads(line)
                got = base(torch.tensor([r["tokens"]]))[0]
                worst = max(worst, (got - torch.tensor(r["logits"])).abs().max().item())
        print(f"harness: this Llama vs the reference logits of {a.base}: max |diff| {worst:.2e}")
        if worst > 1e-4:
            raise SystemExit("the harness does not reproduce the base; nothing checked")
    seqs = [torch.randint(3, c["vocab_size"], (1, n)) for n in (7, 16, min(31, c["max_position_embeddings"]))]
    print(f"peft {peft.__version__}, torch {torch.__version__}")
    print("| adapter | PEFT type | config | tensors loaded | unexpected / unloaded / different | logits vs merged (rel) |")
    print("|---|---|---|---|---|---|")
    for pair in a.pairs:
        ad, merged_dir = pair.rsplit(":", 1)
        raw = json.load(open(os.path.join(ad, "adapter_config.json")))
        cfg_cls = PEFT_TYPE_TO_CONFIG_MAPPING[raw["peft_type"]]
        cfg = cfg_cls.from_pretrained(ad)
        cfg.inference_mode = True
        extra = []
        if raw["peft_type"] == "LORA":
            if cfg.use_rslora:
                extra.append("use_rslora")
            if cfg.use_dora:
                extra.append("use_dora")
            if cfg.rank_pattern:
                extra.append(f"rank_pattern {len(cfg.rank_pattern)}")
            if isinstance(cfg.target_modules, str):
                extra.append("exact target_modules")
        model, _ = build(a.base)

        class Wrapped(nn.Module):  # PeftModel's layout: base_model (the tuner) . model (the LM)
            def __init__(self):
                super().__init__()
                self.peft_config = {"default": cfg}
                self.base_model = PEFT_TYPE_TO_TUNER_MAPPING[raw["peft_type"]](model, cfg, "default")

            def forward(self, ids):
                return self.base_model.model(ids)

        w = Wrapped().eval()
        want = load_file(os.path.join(ad, "adapter_model.safetensors"))
        res = set_peft_model_state_dict(w, want, "default")
        unexpected = list(getattr(res, "unexpected_keys", []))
        missing, unloaded, differ = compare_load(w, want)
        differ = missing + differ  # reported together: not in the model as the file has it
        merged, _ = build(merged_dir)
        worst = 0.0
        with torch.no_grad():
            for s in seqs:
                ref, out = merged(s).double(), w(s).double()
                worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
        ok = not unexpected and not unloaded and not differ and worst <= a.rtol
        print(f"| {os.path.basename(ad.rstrip('/'))} | {raw['peft_type']} | {', '.join(extra) or '-'} | {len(want)} | "
              f"{len(unexpected)} / {len(unloaded)} / {len(differ)} | {worst:.2e} {'ok' if ok else 'FAIL'} |")
        if not ok:
            failures.append(ad)
            for k in (unexpected + unloaded + differ)[:6]:
                print("    ", k)
    if failures:
        print("FAIL:", ", ".join(failures))
        sys.exit(1)
    print("ok: PEFT parses, loads and computes every adapter as loractl merges it")


if __name__ == "__main__":
    main()
