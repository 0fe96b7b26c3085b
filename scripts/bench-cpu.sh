#!/usr/bin/env bash
# Side-by-side CPU benchmark of one LoRA train step (forward + backward + AdamW), loractl vs
# PyTorch, on random-init Llama models of the stories15M and SmolLM-135M shapes, seq 256,
# batch 4, LoRA r 16 on every Linear, the same token ids and the same thread count.
#
#   scripts/bench-cpu.sh                 # both shapes, 2 threads
#   THREADS=1 SHAPES=stories15m STEPS=5 WARMUP=2 scripts/bench-cpu.sh
#
# Rows per shape:
#   loractl        scripts/benchstep (fp32)
#   loractl-bf16   scripts/benchstep -dtype bf16 (the model stored as BF16, base weights kept BF16)
#   torch          scripts/bench_torch.py with the environment as it is
#   torch-tuned    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (OpenBLAS picks its kernel for
#                  this CPU), OMP_WAIT_POLICY=PASSIVE, LD_PRELOAD=libtcmalloc_minimal.so.4
#   torch-bf16     torch-tuned with bf16 autocast (skipped by BF16=auto when the CPU lacks
#                  AVX-512: torch's bf16 matmul then falls back to a scalar loop)
# Every torch row runs with OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = THREADS, loractl with
# GOMAXPROCS = THREADS.
#
# Environment:
#   THREADS      threads for both sides (default 2)
#   SHAPES       shapes to run (default "stories15m smollm135m")
#   WARMUP STEPS untimed and timed steps for every shape (default 2+3 for stories15m, 1+2 for
#                smollm135m: a few steps, so the figures are noisy; raise them for real numbers)
#   PEAK_GFLOPS  machine peak for MFU (default: 218 per thread with AVX-512, 109 with AVX2 only:
#                the fp32 FMA peaks measured on the 2-vCPU AMD EPYC of docs/PERF.md)
#   BF16         auto (default), 1 or 0: run the bf16-autocast row
#   PYTHON       the Python with Debian's torch (default /usr/bin/python3)
#   REPEAT       rounds (default 1): every row runs once per round, rounds alternate the
#                implementations, and the table shows each one's median round
#   OUT          folder for results.jsonl (default: a temporary folder)
#   NO_INSTALL=1 do not apt-get install missing packages
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
SHAPES="${SHAPES:-stories15m smollm135m}"
PYTHON="${PYTHON:-/usr/bin/python3}"
BF16="${BF16:-auto}"

have_avx512() { grep -qw avx512bw /proc/cpuinfo 2>/dev/null; }

# Packages: Debian's torch, tcmalloc, and OpenBLAS (python3-torch alone leaves the reference
# BLAS of libblas3 in place when that is installed first, which makes every matmul slow).
need=()
"$PYTHON" -c 'import torch' 2>/dev/null || need+=(python3-torch)
ldconfig -p | grep -q 'libtcmalloc_minimal\.so\.4 ' || need+=(libtcmalloc-minimal4)
ldconfig -p | grep -q 'libopenblas\.so\.0 ' || need+=(libopenblas0)
if [ "${#need[@]}" -gt 0 ]; then
	if [ "${NO_INSTALL:-}" = 1 ]; then
		echo "bench-cpu: missing ${need[*]} (NO_INSTALL=1)" >&2
		exit 1
	fi
	sudo=()
	[ "$(id -u)" = 0 ] || sudo=(sudo)
	echo "== apt-get install ${need[*]}" >&2
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >&2
fi

if [ -z "${PEAK_GFLOPS:-}" ]; then
	if have_avx512; then PEAK_GFLOPS=$((218 * THREADS)); else PEAK_GFLOPS=$((109 * THREADS)); fi
fi
if [ "$BF16" = auto ]; then
	if have_avx512; then BF16=1; else
		BF16=0
		echo "bench-cpu: no AVX-512 on this CPU; skipping the bf16-autocast row (BF16=1 forces it)" >&2
	fi
fi

OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: >"$RES"
BIN="$OUT/benchstep"
echo "== go build ./scripts/benchstep" >&2
go build -o "$BIN" ./scripts/benchstep

steps_for() { # shape → "warmup steps"
	case "$1" in
	smollm135m) echo "${WARMUP:-1} ${STEPS:-2}" ;;
	*) echo "${WARMUP:-2} ${STEPS:-3}" ;;
	esac
}

torch_env=(OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS")
tuned_env=(-u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE LD_PRELOAD=libtcmalloc_minimal.so.4)

REPEAT="${REPEAT:-1}"
for rep in $(seq "$REPEAT"); do
for shape in $SHAPES; do
	read -r warmup steps <<<"$(steps_for "$shape")"
	[ "$REPEAT" = 1 ] || echo "== round $rep of $REPEAT" >&2
	common=(--shape "$shape" --threads "$THREADS" --warmup "$warmup" --steps "$steps" --peak-gflops "$PEAK_GFLOPS")
	echo "== $shape: loractl ($warmup warm-up + $steps timed steps)" >&2
	GOMAXPROCS="$THREADS" "$BIN" -shape "$shape" -threads "$THREADS" -warmup "$warmup" -steps "$steps" \
		-peak-gflops "$PEAK_GFLOPS" >>"$RES"
	echo "== $shape: loractl, bf16 base weights" >&2
	GOMAXPROCS="$THREADS" "$BIN" -shape "$shape" -threads "$THREADS" -warmup "$warmup" -steps "$steps" \
		-peak-gflops "$PEAK_GFLOPS" -dtype bf16 >>"$RES"
	echo "== $shape: torch as installed" >&2
	env "${torch_env[@]}" "$PYTHON" scripts/bench_torch.py "${common[@]}" --impl torch >>"$RES"
	echo "== $shape: torch tuned" >&2
	env "${tuned_env[@]}" "${torch_env[@]}" "$PYTHON" scripts/bench_torch.py "${common[@]}" --impl torch-tuned >>"$RES"
	if [ "$BF16" = 1 ]; then
		echo "== $shape: torch tuned + bf16 autocast" >&2
		env "${tuned_env[@]}" "${torch_env[@]}" "$PYTHON" scripts/bench_torch.py "${common[@]}" --bf16 \
			--impl torch-bf16 >>"$RES"
	fi
done
done

"$PYTHON" - "$RES" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print("| shape | impl | dtype | tok/s | s/step | loractl ÷ this | peak RSS MiB | GFLOP/s | MFU | loss step 0 (ln V) |")
print("|---|---|---|---|---|---|---|---|---|---|")
def name(r):
    return "loractl-bf16" if r["impl"] == "loractl" and r["dtype"] == "bf16" else r["impl"]
for r in rows:
    r["name"] = name(r)
# REPEAT > 1: one row per (shape, impl), the median round by tokens/s (rounds alternate between
# the implementations, so a slow spell on a shared machine hits all of them).
rounds = {}
for r in rows:
    rounds.setdefault((r["shape"], r["name"]), []).append(r)
rows = []
for rs in rounds.values():
    rs.sort(key=lambda x: x["tokens_per_s"])
    med = dict(rs[len(rs) // 2])
    med["rounds"] = len(rs)
    med["peak_rss_mib"] = max(x["peak_rss_mib"] for x in rs)
    rows.append(med)
for r in rows:
    lc = next((x for x in rows if x["shape"] == r["shape"] and x["name"] == "loractl"), None)
    ratio = f"{lc['tokens_per_s'] / r['tokens_per_s']:.2f}×" if lc else "-"
    print(f"| {r['shape']} | {r['name']} | {r['dtype']} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | {ratio} "
          f"| {r['peak_rss_mib']:.0f} | {r['gflops']:.1f} | {100 * r['mfu']:.1f}% | {r['loss_first']:.3f} ({r['ln_vocab']:.3f}) |")
r0 = rows[0]
print(f"\n{r0['threads']} threads, batch {r0['batch']} × seq {r0['seq']}, LoRA r {r0['r']} on all linear layers, "
      f"median of {r0['rounds']} round(s); "
      f"MFU against {r0['peak_gflops']:g} GFLOP/s; model FLOPs/token = 4·N_linear + 12·L·T·(NH·D) + 6·r·Σ(in+out).")
for shape in dict.fromkeys(r["shape"] for r in rows):
    by = {r["name"]: r for r in rows if r["shape"] == shape}
    if "loractl" in by and "torch-tuned" in by:
        lc, tt = by["loractl"], by["torch-tuned"]
        print(f"{shape}: loractl / PyTorch tuned fp32 = {lc['tokens_per_s'] / tt['tokens_per_s']:.2f}× tokens/s, "
              f"peak RSS {lc['peak_rss_mib']:.0f} vs {tt['peak_rss_mib']:.0f} MiB")
    if "loractl-bf16" in by and "torch-bf16" in by:
        lb, tb = by["loractl-bf16"], by["torch-bf16"]
        print(f"{shape}: loractl bf16 weights / PyTorch tuned bf16 autocast = {lb['tokens_per_s'] / tb['tokens_per_s']:.2f}× tokens/s, "
              f"peak RSS {lb['peak_rss_mib']:.0f} vs {tb['peak_rss_mib']:.0f} MiB")
EOF
echo "results: $RES" >&2
