#!/usr/bin/env python3
"""The PyTorch+PEFT half of the GPU speed comparison (scripts/gpu-check.sh, step speed-vs-peft).

It loads the random-init Llama that `benchstep -model-dir DIR` wrote (config.json +
model.safetensors, the same weights loractl trains) with transformers, adds LoRA with PEFT
(LoraConfig r, alpha, target_modules="all-linear", dropout 0: every Linear of every block,
lm_head excluded, the same modules as benchstep), freezes the base and trains the adapters with
torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0) after clip_grad_norm_(1.0). The
batch is benchstep's: splitmix64 token ids from --data-seed (bench_torch.make_batch).

--dtype bf16 loads the base in bfloat16 (PEFT keeps the adapters in float32, its
autocast_adapter_dtype default), attention is PyTorch's SDPA (flash attention on an H100). It
prints one JSON line with benchstep's fields; peak_gpu_mib is torch.cuda.max_memory_reserved
(the caching allocator's high-water mark), and the FLOPs per token are benchstep's formula.

    python3 scripts/bench_peft.py --model-dir /tmp/llama1b --shape llama1b --seq 2048 --batch 1
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_torch import SHAPES, flops_per_token, make_batch  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="the folder benchstep -model-dir wrote")
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--peak-gflops", type=float, default=989_000, help="H100 SXM dense bf16")
    a = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(a.seed)
    s = SHAPES[a.shape]
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if a.dtype == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype=dt, attn_implementation="sdpa").cuda()
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules="all-linear", bias="none")
    model = get_peft_model(model, cfg)
    model.train()
    # The adapted Linears: PEFT wraps each one, the frozen original is its base_layer.
    mods = [(m.base_layer.in_features, m.base_layer.out_features) for n, m in model.named_modules()
            if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
            and hasattr(m, "base_layer")]
    if len(mods) != 7 * s["layers"]:
        sys.exit(f"bench_peft: PEFT adapted {len(mods)} Linears, want 7 per block")
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    x, y = make_batch(a.data_seed, a.batch, a.seq, s["vocab"])
    x, y = x.cuda(), y.cuda()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, s["vocab"]), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()  # synchronises

    losses, times = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step())
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    sps = sum(times) / len(times)
    tps = a.batch * a.seq / sps
    fpt = flops_per_token(s, mods, a.r, a.seq)
    gflops = fpt * tps / 1e9
    print(json.dumps(dict(
        impl="pytorch+peft", device=torch.cuda.get_device_name(0), shape=a.shape, dtype=a.dtype,
        batch=a.batch, seq=a.seq, r=a.r, warmup=a.warmup, steps=a.steps, params=n_params,
        trainable=n_trainable, tokens_per_s=tps, s_per_step=sps, s_per_step_min=min(times),
        peak_gpu_mib=torch.cuda.max_memory_reserved() / 2**20, flops_per_token=fpt, gflops=gflops,
        peak_gflops=a.peak_gflops, mfu=gflops / a.peak_gflops, loss_first=losses[0],
        loss_last=losses[-1], ln_vocab=math.log(s["vocab"]),
        versions=dict(torch=torch.__version__, transformers=__import__("transformers").__version__,
                      peft=__import__("peft").__version__))))


if __name__ == "__main__":
    main()
