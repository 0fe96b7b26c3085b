#!/usr/bin/env python3
"""PEFT fidelity of a loractl adapter (scripts/gpu-check.sh, step peft-fidelity).

Three checks, each against transformers + PEFT as the reference:

1. load:     PeftModel.from_pretrained(base, ADAPTER) takes every tensor of
             adapter_model.safetensors (LoRA, DoRA or VeRA): each one equals the PEFT
             model's tensor bit for bit, and no adapter tensor of PEFT's is left without one.
2. merged:   the folder `loractl merge` wrote loads with AutoModelForCausalLM, and its logits
             equal those of base + PEFT adapter (float32) within --rtol.
3. generate: PEFT's greedy generation from each prompt of IDS (the JSON lines that
             `loractl generate --ids` printed) gives the same token ids as loractl did.

    python3 scripts/peft_fidelity.py --base models/tiny-arith --adapter OUT/fid \
        --merged OUT/fid-merged --ids OUT/fid-ids.jsonl
"""

import argparse
import json
import re
import sys

import torch


def peft_key(k):
    """A PEFT model's state-dict key as PEFT writes it to a file: without the adapter name
    (...lora_A.default.weight, ...vera_lambda_b.default) and, for DoRA's magnitude, without .weight."""
    k = re.sub(r"\.default(?=\.|$)", "", k)
    return k[: -len(".weight")] if k.endswith("lora_magnitude_vector.weight") else k


def is_adapter_tensor(name):
    """Whether a parameter of a PEFT model belongs to the adapter (LoRA, DoRA or VeRA); by name,
    since a model loaded for inference has requires_grad off everywhere."""
    return "lora_" in name or "vera_lambda_" in name


def compare_load(model, want):
    """(missing, unloaded, different) between a PEFT model and the file's tensors `want`: file
    tensors the model lacks, adapter tensors of the model the file lacks, and tensors whose values
    differ."""
    state = {peft_key(k): v for k, v in model.state_dict().items()}
    adapter = [peft_key(k) for k, _ in model.named_parameters() if is_adapter_tensor(k)]
    missing = [k for k in want if k not in state]
    unloaded = [k for k in adapter if k not in want]
    differ = [k for k in want if k in state and not torch.equal(state[k].cpu(), want[k].to(state[k].dtype))]
    return missing, unloaded, differ


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", help="the folder loractl merge wrote (float32)")
    ap.add_argument("--ids", help='JSON lines {"prompt_ids":[...],"generated_ids":[...]} from loractl generate --ids')
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.device
    failures = []

    base = AutoModelForCausalLM.from_pretrained(a.base, torch_dtype=torch.float32).to(dev).eval()
    model = PeftModel.from_pretrained(base, a.adapter).to(dev).eval()

    # 1. every tensor of the file is in the model, unchanged, and every adapter tensor of the
    #    PEFT model came from the file (LoRA: lora_A/lora_B; DoRA: also lora_magnitude_vector;
    #    VeRA: vera_lambda_b/d, and the shared vera_A/vera_B when the file holds them)
    want = load_file(f"{a.adapter}/adapter_model.safetensors")

    missing, unloaded, differ = compare_load(model, want)
    adapter = [k for k, _ in model.named_parameters() if is_adapter_tensor(k)]
    print(f"load ({model.peft_config['default'].peft_type}): {len(want)} tensors in the file, {len(adapter)} adapter "
          f"tensors in the PEFT model; missing {len(missing)}, not from the file {len(unloaded)}, different {len(differ)}")
    if missing or unloaded or differ:
        failures.append("load")
        for k in (missing + unloaded + differ)[:10]:
            print("   ", k)

    gen = torch.Generator().manual_seed(0)
    V = base.config.vocab_size
    seqs = [torch.randint(3, V, (1, n), generator=gen) for n in (8, 17, 31)]

    # 2. the merged folder's logits equal base + adapter
    if a.merged:
        merged = AutoModelForCausalLM.from_pretrained(a.merged, torch_dtype=torch.float32).to(dev).eval()
        worst = 0.0
        with torch.no_grad():
            for s in seqs:
                s = s.to(dev)
                ref = model(input_ids=s).logits.double()
                out = merged(input_ids=s).logits.double()
                worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
        print(f"merged: logits of the merged model vs base + PEFT adapter: max |diff| / max |ref| = {worst:.2e} (rtol {a.rtol:g})")
        if not worst <= a.rtol:
            failures.append("merged")

    # 3. greedy generation gives the same ids
    if a.ids:
        n_ok = n = 0
        with open(a.ids) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                p, g = r["prompt_ids"], r["generated_ids"]
                if not g:
                    continue
                n += 1
                with torch.no_grad():
                    out = model.generate(input_ids=torch.tensor([p], device=dev), max_new_tokens=len(g),
                                         do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0)
                ours = out[0, len(p):].tolist()[: len(g)]
                same = ours == g
                n_ok += same
                print(f"generate: prompt {p[:8]}... loractl {g[:12]} peft {ours[:12]}: {'same' if same else 'DIFFERENT'}")
        if n == 0 or n_ok != n:
            failures.append("generate")

    if failures:
        print("FAIL:", ", ".join(failures))
        sys.exit(1)
    print("ok: PEFT loads the adapter exactly, and agrees with loractl")


if __name__ == "__main__":
    main()
