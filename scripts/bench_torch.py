#!/usr/bin/env python3
"""The PyTorch half of scripts/bench-cpu.sh: one LoRA train step on a random-init Llama.

It builds the model of scripts/benchstep with torch.nn (RMSNorm, rotate-half RoPE, GQA
attention with a causal softmax (scaled_dot_product_attention where torch has it), SwiGLU MLP,
lm_head tied to the embedding), applies LoRA the way PEFT does (on every Linear of every block:
A Kaiming-uniform(a=sqrt(5)), B zeros, scale alpha/r, dropout 0), freezes the base and trains
the adapters with torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0) after
clip_grad_norm_(1.0), over the same batch of token ids as benchstep (splitmix64 from
--data-seed). It prints one JSON line with the fields benchstep prints; see the package comment
of scripts/benchstep/main.go for the FLOPs formula.

    /usr/bin/python3 scripts/bench_torch.py --shape stories15m --threads 2 [--bf16]
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    "stories15m": dict(dim=288, layers=6, heads=6, kv=6, ffn=768, vocab=32000),
    "smollm135m": dict(dim=576, layers=30, heads=9, kv=3, ffn=1536, vocab=49152),
    "llama1b": dict(dim=2048, layers=16, heads=32, kv=8, ffn=8192, vocab=128256),  # Llama-3.2-1B
}
EPS = 1e-5
ROPE_THETA = 10000.0
MASK64 = (1 << 64) - 1


def splitmix64(seed):
    s = seed & MASK64
    while True:
        s = (s + 0x9E3779B97F4A7C15) & MASK64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


def make_batch(seed, B, T, V):
    """B rows of T inputs and their next tokens, the same ids as benchstep's makeBatch."""
    g = splitmix64(seed)
    ids = torch.tensor([next(g) % V for _ in range(B * (T + 1))], dtype=torch.long).view(B, T + 1)
    return ids[:, :T].contiguous(), ids[:, 1:].contiguous()


class LoRALinear(nn.Module):
    """A frozen Linear with a PEFT-style low-rank update: y = W0 x + scale * B(A(x))."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT reset_lora_parameters
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling  # dropout 0: identity


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        return self.weight * x.to(dt)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        C, H, KV, Fd = s["dim"], s["heads"], s["kv"], s["ffn"]
        self.H, self.KV, self.D = H, KV, C // H
        self.input_layernorm = RMSNorm(C)
        self.q_proj = nn.Linear(C, H * self.D, bias=False)
        self.k_proj = nn.Linear(C, KV * self.D, bias=False)
        self.v_proj = nn.Linear(C, KV * self.D, bias=False)
        self.o_proj = nn.Linear(H * self.D, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C)
        self.gate_proj = nn.Linear(C, Fd, bias=False)
        self.up_proj = nn.Linear(C, Fd, bias=False)
        self.down_proj = nn.Linear(Fd, C, bias=False)

    def attention(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.KV != self.H:  # HF repeat_kv
            k = k.repeat_interleave(self.H // self.KV, dim=1)
            v = v.repeat_interleave(self.H // self.KV, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0: HF's eager attention
            w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.D) + mask
            w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            a = torch.matmul(w, v)
        return self.o_proj(a.transpose(1, 2).reshape(B, T, self.H * self.D))

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.embed_tokens = nn.Embedding(s["vocab"], s["dim"])
        self.layers = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.norm = RMSNorm(s["dim"])
        self.lm_head = nn.Linear(s["dim"], s["vocab"], bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self.lm_head.weight = self.embed_tokens.weight  # tied

    def forward(self, ids):
        T = ids.shape[1]
        D = self.s["dim"] // self.s["heads"]
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        f = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def apply_lora(model, r, alpha):
    """Freezes the base and wraps every block Linear (PEFT all-linear: lm_head excluded)."""
    for p in model.parameters():
        p.requires_grad_(False)
    mods = []
    for layer in model.layers:
        for n in LINEARS:
            base = getattr(layer, n)
            setattr(layer, n, LoRALinear(base, r, alpha))
            mods.append((base.in_features, base.out_features))
    return mods


def flops_per_token(s, mods, r, T):
    C, Fd, V, L = s["dim"], s["ffn"], s["vocab"], s["layers"]
    D = C // s["heads"]
    Q, KV = s["heads"] * D, s["kv"] * D
    n = L * (Q * C + 2 * KV * C + C * Q + 3 * C * Fd) + V * C
    return 4 * n + 12 * L * T * Q + sum(6 * r * (i + o) for i, o in mods)


def vm_hwm_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1.0


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="stories15m", choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--peak-gflops", type=float, default=436)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (weights stay fp32)")
    ap.add_argument("--impl", default="torch", help="label for the impl field")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    s = SHAPES[a.shape]
    model = Llama(s)
    mods = apply_lora(model, a.r, a.alpha)
    model.train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bad = [n for n, _ in trainable if ".lora_A." not in n and ".lora_B." not in n]
    if bad:
        sys.exit(f"bench_torch: non-LoRA parameters are trainable: {bad[:5]}")
    if len(trainable) != 2 * len(mods):
        sys.exit(f"bench_torch: {len(trainable)} trainable tensors, want {2 * len(mods)}")
    params = [p for _, p in trainable]
    n_trainable = sum(p.numel() for p in params)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)  # tied: once
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    x, y = make_batch(a.data_seed, a.batch, a.seq, s["vocab"])

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, s["vocab"]), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    setup_hwm = vm_hwm_mib()
    step_rss = reset_hwm()
    losses, times = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        losses.append(step())
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    sps = sum(times) / len(times)
    tps = a.batch * a.seq / sps
    fpt = flops_per_token(s, mods, a.r, a.seq)
    hwm = vm_hwm_mib()
    gflops = fpt * tps / 1e9
    res = dict(
        impl=a.impl, shape=a.shape, dtype="bf16-autocast" if a.bf16 else "fp32", threads=a.threads,
        batch=a.batch, seq=a.seq, r=a.r, warmup=a.warmup, steps=a.steps, params=n_params,
        trainable=n_trainable, tokens_per_s=tps, s_per_step=sps, s_per_step_min=min(times),
        peak_rss_mib=max(hwm, setup_hwm) if step_rss else hwm, step_peak_rss_mib=hwm if step_rss else -1,
        flops_per_token=fpt, gflops=gflops, peak_gflops=a.peak_gflops, mfu=gflops / a.peak_gflops,
        loss_first=losses[0], loss_last=losses[-1], ln_vocab=math.log(s["vocab"]),
        torch=torch.__version__, sdpa=hasattr(F, "scaled_dot_product_attention"),
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
