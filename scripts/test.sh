#!/usr/bin/env bash
# Runs loractl's test suite: vet, unit and golden tests, a static build (and an arm64 one), a
# short fuzz run of each parser, and the backend tests again on the portable Go kernels. Reference data comes from $LORACTL_TESTDATA (default: ../shared beside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LORACTL_TESTDATA:-}" ] && [ -d ../shared ]; then
	LORACTL_TESTDATA=$(cd ../shared && pwd)
fi
export LORACTL_TESTDATA="${LORACTL_TESTDATA:-}"
[ -n "$LORACTL_TESTDATA" ] || echo "warning: LORACTL_TESTDATA is unset and ../shared is missing; golden tests will skip" >&2

FUZZTIME="${FUZZTIME:-15s}"

echo "== go vet"
go vet ./...
echo "== static build (CGO_ENABLED=0)"
CGO_ENABLED=0 go build -o /dev/null ./cmd/loractl
echo "== CUDA build (-tags cuda: cgo dlopen shim, no CUDA needed to build)"
go vet -tags cuda ./...
go build -tags cuda -o /dev/null ./cmd/loractl
echo "== portable build: arm64 (pure-Go kernels, no assembly)"
GOARCH=arm64 CGO_ENABLED=0 go build -o /dev/null ./cmd/loractl
GOARCH=arm64 go vet ./internal/backend/...
echo "== fuzz (${FUZZTIME} each)"
go test -run '^$' -fuzz '^FuzzParseHeader$' -fuzztime "$FUZZTIME" ./internal/safetensors
go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime "$FUZZTIME" ./internal/tokenizer/sentencepiece
go test -run '^$' -fuzz '^FuzzQuantize$' -fuzztime "$FUZZTIME" ./internal/quant
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "$FUZZTIME" ./internal/gguf
echo "== go test (includes ./kernels/emu: every CUDA kernel executed on the CPU by the emulator; skips without g++)"
go test -count=1 ./...
echo "== go test -tags cuda (the probe against a stand-in driver library; GPU tests skip without one)"
go test -count=1 -tags cuda ./internal/backend/cuda ./internal/cli
echo "== go test: the portable kernels (what arm64 runs), on this machine"
LORACTL_GEMM=go LORACTL_VEC=go go test -count=1 ./internal/backend/... ./internal/engine ./internal/model
