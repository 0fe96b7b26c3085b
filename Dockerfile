# loractl with the CUDA backend, in two stages:
#   1. build: the Go toolchain compiles loractl with -tags cuda (cgo for the small dlopen shim;
#      no CUDA toolkit is needed, the kernels are committed as PTX and embedded).
#   2. runtime: NVIDIA's CUDA runtime image, which carries cuBLAS. The driver (libcuda.so.1)
#      comes from the host through the NVIDIA container toolkit (docker run --gpus all).
#
#   docker build -t loractl .
#   docker run --rm --gpus all loractl inspect --devices
#   docker run --rm --gpus all -v "$PWD:/work" -w /work loractl \
#       train --config configs/quickstart.yaml --set train.device=cuda:0 --overwrite
#
# Without a GPU the same image runs on the CPU (--device auto says why it fell back).
ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -tags cuda -trimpath \
        -ldflags "-s -w -X github.com/loractl/loractl/internal/cli.Version=${VERSION}" \
        -o /out/loractl ./cmd/loractl \
    && /out/loractl --version

FROM ${RUNTIME_IMAGE}
# The binary links only libc (glibc 2.36 from bookworm; Ubuntu 24.04 has 2.39).
COPY --from=build /out/loractl /usr/local/bin/loractl
COPY --from=build /src/configs /opt/loractl/configs
COPY --from=build /src/models /opt/loractl/models
COPY --from=build /src/data /opt/loractl/data
WORKDIR /opt/loractl
ENTRYPOINT ["loractl"]
CMD ["--help"]
