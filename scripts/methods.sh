#!/usr/bin/env bash
# Trains every LoRA variant on stories260K with configs/stories260k.yaml (Moby Dick, the same
# data, steps and seed for all) and prints the docs/METHODS.md table: trainable parameters,
# peak resident memory, tokens/s (median of the steps), final eval loss.
# Usage: LORACTL_TESTDATA=$(realpath ../shared) scripts/methods.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LORACTL_TESTDATA:?set LORACTL_TESTDATA to the shared reference folder}"
STEPS="${1:-200}"
BIN="${BIN:-$(mktemp -d)/loractl}"
go build -o "$BIN" ./cmd/loractl
OUT="$(mktemp -d)"
# name | --set options (lr is per method where the method's paper tunes it apart)
methods=(
	"lora|"
	"rslora|lora.rslora=true"
	"lora+|lora.lora_plus_ratio=16 train.lr=5e-4"
	"lora-fa|lora.freeze_a=true"
	"asymmetric lora|lora.freeze_a=true lora.init_a=orthogonal"
	"rank_schedule linear|lora.rank_schedule=linear lora.r_min=2 lora.r_max=12"
	"dylora|lora.method=dylora lora.r_min=1 lora.r_max=8"
	"dora|lora.method=dora"
	"vera|lora.method=vera lora.r=256 train.lr=2e-2"
	"tied|lora.method=tied"
	"nola|lora.method=nola lora.nola_k=64 train.lr=1e-2"
	"sora|lora.method=sora lora.sora_lambda=2"
	"adalora|lora.method=adalora lora.init_r=12 lora.target_r=8 lora.tinit=20 lora.tfinal=40 lora.delta_t=10"
)
printf '| method | options | trainable params | peak RSS | tokens/s | eval loss (start → end) | saved ranks |\n|---|---|---|---|---|---|---|\n'
for m in "${methods[@]}"; do
	name="${m%%|*}"
	opts="${m#*|}"
	sets=()
	for o in $opts; do sets+=(--set "$o"); done
	dir="$OUT/${name// /_}"
	log="$dir.log"
	/usr/bin/time -f '%M' -o "$dir.rss" "$BIN" train --config configs/stories260k.yaml "${sets[@]}" \
		--max-steps "$STEPS" --set train.save_every=0 --out "$dir" --quiet >"$log" 2>&1 || { echo "$name failed:"; tail -5 "$log"; continue; }
	trainable=$("$BIN" train --config configs/stories260k.yaml "${sets[@]}" --dry-run --out "$dir.dry" 2>&1 | sed -n 's/^trainable: \([0-9]*\) parameters.*/\1/p')
	rss=$(awk '{printf "%.0f MiB", $1/1024}' "$dir.rss")
	python3 - "$dir/metrics.jsonl" "$name" "$opts" "$trainable" "$rss" <<'PY'
import json, sys, statistics
path, name, opts, trainable, rss = sys.argv[1:]
recs = [json.loads(l) for l in open(path)]
tps = statistics.median(r["tokens_per_s"] for r in recs if r.get("tokens_per_s") is not None and r["step"] > 0)
ev = [r["eval_loss"] for r in recs if r.get("eval_loss") is not None]
cfg = json.load(open(path.rsplit("/", 1)[0] + "/adapter_config.json"))
ranks = "—"
if cfg.get("peft_type") == "LORA":
    import struct
    raw = open(path.rsplit("/", 1)[0] + "/adapter_model.safetensors", "rb").read()
    hlen = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + hlen])
    rs = [v["shape"][0] for k, v in hdr.items() if k.endswith("lora_A.weight")]
    ranks = f"{min(rs)}–{max(rs)}, Σ {sum(rs)} over {len(rs)}" if min(rs) != max(rs) else f"{rs[0]} × {len(rs)}"
print(f"| {name} | `{opts or 'defaults'}` | {int(trainable):,} | {rss} | {tps:,.0f} | {ev[0]:.4f} → {ev[-1]:.4f} | {ranks} |")
PY
done
