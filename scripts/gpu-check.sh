#!/usr/bin/env bash
# The one-call GPU check (issue #5). Two halves:
#
#   scripts/gpu-check.sh prepare        here (needs Go and gcc): builds the -tags cuda loractl and
#                                       the CUDA test binaries into build/gpu (git-ignored)
#   scripts/gpu-check.sh run OUTDIR     on the GPU machine (no Go, no network): runs them from the
#                                       repository root and writes OUTDIR/report.md and one log per
#                                       step, the summary table last
#
# Carry build/gpu with the working tree to the GPU machine, then run the second half. Steps:
#   1. devices    nvidia-smi, and the driver/cuBLAS/GPUs loractl finds (inspect --devices)
#   2. cuda-tests the CUDA package's tests: shim, context, allocator, and every kernel against its
#                 CPU twin on the GPU (kernels_gpu_test.go)
#   3. kernels    the committed PTX assembled by that machine's ptxas for sm_90, and the .cu files
#                 rebuilt by its nvcc for sm_90 (catches what the older nvcc hid)
#   4. generate-vs-cpu  greedy generation with the repository's tiny model on the GPU and on the
#                 CPU: the same text
#   5. train-vs-cpu    50 LoRA steps of configs/quickstart.yaml on the GPU and on the CPU: every
#                 step's loss within 1%
#   6. peft-fidelity   a LoRA trained on the GPU (quickstart, 100 steps) loads in PEFT tensor for
#                 tensor; `loractl merge` of it gives the logits of base + PEFT adapter; PEFT's
#                 greedy generation gives loractl's ids (scripts/peft_fidelity.py)
#   7. speed-vs-peft   one LoRA train step (r 16, all-linear, seq 2048) on the SmolLM-135M and
#                 Llama-3.2-1B shapes: loractl (benchstep -device cuda:0) and PyTorch+PEFT
#                 (scripts/bench_peft.py, bf16 base, SDPA) on the same random-init weights and
#                 tokens: tokens/s, peak GPU memory (nvidia-smi, sampled every 100 ms, for both),
#                 MFU against 989 dense bf16 TFLOP/s
#   8. methods    every LoRA variant of docs/METHODS.md (quickstart, 30 steps) on the GPU and on the
#                 CPU: every step's loss within 1%, the placement line of --dry-run on the GPU, and
#                 the GPU adapter loaded by PEFT (its own format: LoRA, DoRA or VeRA) with the
#                 logits of `loractl merge` of it equal to base + PEFT adapter
#                 (scripts/peft_fidelity.py --merged)
set -uo pipefail
cd "$(dirname "$0")/.."
B=build/gpu

prepare() {
	set -e
	rm -rf "$B"
	mkdir -p "$B"
	echo "== go build -tags cuda ./cmd/loractl" >&2
	CGO_ENABLED=1 go build -tags cuda -o "$B/loractl" ./cmd/loractl
	echo "== go test -c -tags cuda ./internal/backend/cuda" >&2
	CGO_ENABLED=1 go test -c -tags cuda -o "$B/cuda.test" ./internal/backend/cuda
	echo "== go build -tags cuda ./scripts/benchstep" >&2
	CGO_ENABLED=1 go build -tags cuda -o "$B/benchstep" ./scripts/benchstep
	echo "== go test -c ./kernels" >&2
	go test -c -o "$B/kernels.test" ./kernels
	git rev-parse HEAD >"$B/commit" 2>/dev/null || true
	du -sh "$B" >&2
	echo "prepared $B; carry it to the GPU machine and run: bash scripts/gpu-check.sh run \$OUT" >&2
}

run() {
	local out=${1:?usage: scripts/gpu-check.sh run OUTDIR}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	local root table
	root=$(pwd)
	table="$out/table.md"
	printf '| step | result | log |\n|---|---|---|\n' >"$table"
	step() { # name, then the command
		local name=$1 rc
		shift
		local t0=$SECONDS
		("$@") >"$out/$name.log" 2>&1
		rc=$?
		local res="ok"
		[ $rc -eq 0 ] || res="FAIL (exit $rc)"
		printf '| %s | %s, %ds | %s.log |\n' "$name" "$res" $((SECONDS - t0)) "$name" >>"$table"
		echo "== $name: $res" >&2
	}
	[ -x "$B/loractl" ] || { echo "gpu-check: $B is missing: run 'scripts/gpu-check.sh prepare' here and carry $B" >&2; exit 1; }

	step devices bash -c "nvidia-smi; echo; ldconfig -p | grep -E 'libcuda.so|libcublas.so' ; echo; '$root/$B/loractl' inspect --devices; '$root/$B/loractl' inspect --devices --json"
	step cuda-tests bash -c "cd internal/backend/cuda && LORACTL_REQUIRE_GPU=1 '$root/$B/cuda.test' -test.v -test.count=1"
	step kernels bash -c "cd kernels && '$root/$B/kernels.test' -test.v -test.count=1 && if command -v nvcc >/dev/null; then nvcc --version | tail -2; for f in *.cu; do nvcc -cubin -arch=sm_90 -O3 -o /tmp/loractl-\$f.cubin \$f || exit 1; done && echo 'nvcc sm_90: ok'; else echo 'nvcc not found: skipped the sm_90 rebuild'; fi"
	step generate-vs-cpu bash -c "for p in '12+34=' '57-23=' '99+1='; do c=\$('$root/$B/loractl' generate --device cpu --model models/tiny-arith --prompt \"\$p\" -n 6 --temperature 0); g=\$('$root/$B/loractl' generate --device cuda:0 --model models/tiny-arith --prompt \"\$p\" -n 6 --temperature 0) || exit 1; echo \"cpu: \$c | gpu: \$g\"; [ \"\$c\" = \"\$g\" ] || exit 1; done"
	step train-vs-cpu bash -c "for d in cpu cuda:0; do '$root/$B/loractl' train --config configs/quickstart.yaml --quiet --overwrite --max-steps 50 --set train.eval_every=0 --set train.device=\$d --out '$out/train-'\$d || exit 1; done; python3 - '$out/train-cpu/metrics.jsonl' '$out/train-cuda:0/metrics.jsonl' <<'PY'
import json, sys
def losses(p):
    return [r['loss'] for r in map(json.loads, open(p)) if r.get('loss') is not None and r.get('step', 0) > 0]
c, g = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) / abs(a) for a, b in zip(c, g))
print(f'{len(c)} steps; cpu loss {c[0]:.4f} -> {c[-1]:.4f}, gpu {g[0]:.4f} -> {g[-1]:.4f}; worst relative difference {worst:.2e}')
sys.exit(0 if len(c) == len(g) == 50 and worst <= 0.01 else 1)
PY"
	step peft-fidelity peft_fidelity "$root" "$out"
	step speed-vs-peft speed_vs_peft "$root" "$out"
	step methods methods_check "$root" "$out"
	{
		echo "# loractl GPU check"
		echo
		echo "commit $(cat "$B/commit" 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
		echo
		for f in devices cuda-tests kernels generate-vs-cpu train-vs-cpu peft-fidelity speed-vs-peft methods; do
			echo "## $f"
			echo '```'
			tail -n 60 "$out/$f.log"
			echo '```'
			echo
		done
		cat "$table"
	} >"$out/report.md"
	cat "$table"
}

# peakmem LOG CMD...: runs CMD while sampling the GPU's used memory every 100 ms; appends the peak
# (MiB, the whole GPU, so nothing else may run) to LOG.
peakmem() {
	local log=$1 smi rc
	shift
	nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log.smi" &
	smi=$!
	"$@"
	rc=$?
	kill "$smi" 2>/dev/null
	wait "$smi" 2>/dev/null
	sort -n "$log.smi" | tail -1 >>"$log"
	return $rc
}

# peft_fidelity ROOT OUT: the step peft-fidelity (see the header).
peft_fidelity() {
	local L=$1/$B/loractl o=$2/fid p
	"$L" train --config configs/quickstart.yaml --quiet --overwrite --max-steps 100 \
		--set train.eval_every=0 --set train.device=cuda:0 --out "$o" || return 1
	"$L" merge --base models/tiny-arith --adapter "$o" --out "$o-merged" --dtype f32 --overwrite || return 1
	for p in '19-7=' '45-23=' '88-9=' '60-41='; do
		"$L" generate --device cuda:0 --model models/tiny-arith --adapter "$o" --prompt "$p" -n 6 \
			--temperature 0 --ids | grep -o '{"prompt_ids".*}' || return 1
	done >"$o-ids.jsonl"
	python3 scripts/peft_fidelity.py --base models/tiny-arith --adapter "$o" --merged "$o-merged" --ids "$o-ids.jsonl"
}

# speed_vs_peft ROOT OUT: the step speed-vs-peft (see the header).
speed_vs_peft() {
	local root=$1 out=$2 sh rc=0
	for sh in smollm135m llama1b; do
		peakmem "$out/speed-$sh-loractl.mem" "$root/$B/benchstep" -shape "$sh" -device cuda:0 -seq 2048 -batch 1 -warmup 2 -steps 5 \
			-model-dir "/tmp/loractl-bench-$sh" -peak-gflops 989000 >"$out/speed-$sh-loractl.json" || rc=1
		peakmem "$out/speed-$sh-peft.mem" python3 scripts/bench_peft.py --model-dir "/tmp/loractl-bench-$sh" --shape "$sh" --seq 2048 --batch 1 \
			--warmup 2 --steps 5 >"$out/speed-$sh-peft.json" || rc=1
	done
	python3 - "$out" <<'PY' || rc=1
import json, sys, os
out = sys.argv[1]
print("| shape | impl | dtype | tokens/s | peak GPU MiB (nvidia-smi) | MFU | loss first -> last |")
print("|---|---|---|---|---|---|---|")
for sh in ("smollm135m", "llama1b"):
    rows = {}
    for impl in ("loractl", "peft"):
        try:
            r = json.loads(open(f"{out}/speed-{sh}-{impl}.json").read().strip().splitlines()[-1])
            mem = open(f"{out}/speed-{sh}-{impl}.mem").read().split()[-1]
        except Exception as e:
            print(f"| {sh} | {impl} | failed: {e} | | | | |")
            continue
        rows[impl] = (r, float(mem))
        print(f"| {sh} | {impl} | {r['dtype']} | {r['tokens_per_s']:.0f} | {mem} | {100 * r['mfu']:.1f}% | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    if len(rows) == 2:
        (a, ma), (b, mb) = rows["loractl"], rows["peft"]
        print(f"\n{sh}: loractl / PEFT speed {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, memory {ma / mb:.2f}x\n")
PY
	return $rc
}

# The LoRA variants of the methods step: name | --set options (tiny-arith, 30 steps).
METHODS=(
	"lora+|lora.lora_plus_ratio=16"
	"lora-fa|lora.freeze_a=true lora.init_a=orthogonal"
	"rank_schedule|lora.rank_schedule=linear lora.r_min=2 lora.r_max=8"
	"dylora|lora.method=dylora lora.r_min=1 lora.r_max=8"
	"dora|lora.method=dora"
	"vera|lora.method=vera lora.r=64 train.lr=1e-2"
	"tied|lora.method=tied"
	"nola|lora.method=nola lora.nola_k=16 train.lr=1e-2"
	"sora|lora.method=sora lora.sora_lambda=2"
	"adalora|lora.method=adalora lora.init_r=8 lora.target_r=4 lora.tinit=5 lora.tfinal=10 lora.delta_t=5"
)

# methods_check ROOT OUT [DEVICES]: the step methods (see the header). DEVICES defaults to
# "cpu cuda:0"; the PEFT half runs where python3 has peft.
methods_check() {
	local L=$1/$B/loractl out=$2/methods devs=${3:-cpu cuda:0} m name opts d rc=0 sets o
	mkdir -p "$out"
	for m in "${METHODS[@]}"; do
		name=${m%%|*}
		opts=${m#*|}
		sets=()
		for o in $opts; do sets+=(--set "$o"); done
		echo "== $name ($opts)"
		for d in $devs; do
			"$L" train --config configs/quickstart.yaml --quiet --overwrite --max-steps 30 --set train.eval_every=0 \
				--set train.save_every=0 "${sets[@]}" --set train.device="$d" --out "$out/$name-$d" || { echo "$name on $d: train failed"; rc=1; continue 2; }
		done
		"$L" train --config configs/quickstart.yaml "${sets[@]}" --set train.device="${devs##* }" --dry-run --out "$out/$name-dry" 2>&1 | sed -n '/^adapters:/,/^memory plan/p' | grep -v '^memory plan'
		python3 - "$out/$name-"*/metrics.jsonl <<'PY' || rc=1
import json, sys
def losses(p):
    return [r['loss'] for r in map(json.loads, open(p)) if r.get('loss') is not None and r.get('step', 0) > 0]
runs = [losses(p) for p in sys.argv[1:]]
first = runs[0]
worst = max((abs(a - b) / abs(a) for r in runs[1:] for a, b in zip(first, r)), default=0.0)
print(f"loss {first[0]:.4f} -> {first[-1]:.4f} over {len(first)} steps; {len(runs)} devices, worst relative difference {worst:.2e}")
sys.exit(0 if all(len(r) == 30 for r in runs) and worst <= 0.01 and first[-1] < first[0] else 1)
PY
		local a="$out/$name-${devs##* }"
		"$L" merge --base models/tiny-arith --adapter "$a" --out "$a-merged" --dtype f32 --overwrite >/dev/null || { echo "$name: merge failed"; rc=1; continue; }
		if python3 -c 'import peft' 2>/dev/null; then
			python3 scripts/peft_fidelity.py --base models/tiny-arith --adapter "$a" --merged "$a-merged" || rc=1
		else
			echo "peft is not installed here: skipped the PEFT load"
		fi
	done
	return $rc
}

case "${1:-}" in
prepare) prepare ;;
run) run "${2:-}" ;;
methods-cpu) # the CPU half of the methods step, for a machine without a GPU (after prepare, or with B=...)
	methods_check "$(pwd)" "${2:?usage: scripts/gpu-check.sh methods-cpu OUTDIR}" cpu ;;
*)
	echo "usage: scripts/gpu-check.sh prepare | run OUTDIR | methods-cpu OUTDIR" >&2
	exit 2
	;;
esac
