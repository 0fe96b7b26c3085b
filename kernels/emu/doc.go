// Package emu runs loractl's CUDA kernels on the CPU, so that every kernel executes and is
// checked against its CPU backend twin on machines without a GPU.
//
// The .cu files compile as plain C++ with g++ against cuda_emu.h (the CUDA built-ins the kernels
// use); harness/runtime.cpp runs a launch with the threads of each block as cooperative fibers, so
// __syncthreads and the warp shuffles behave as on the GPU, and stops with a message on barrier
// divergence, a shuffle from an inactive lane, an access past the end of a buffer or a write to
// a read-only input. Outputs are poisoned with NaN before each launch. The tests in this package
// (emu_test.go) build the emulator with g++ (they skip without it), launch every kernel listed
// in kernels.Modules with the grid and block the CUDA backend uses, on fresh random inputs, and
// compare with internal/backend/cpu. Every launch runs twice, with blocks and threads in forward
// and in reverse order; the results must be bitwise equal, which catches many (not all) races.
//
// What the emulator cannot show: timing, memory coalescing and bank conflicts, the real warp
// scheduler (lanes here never run ahead of each other inside a warp between synchronisation
// points, so a race the two schedules do not expose stays hidden), the GPU's fast-math
// intrinsics (rsqrtf, __expf here are the correctly rounded C functions) and FMA contraction.
package emu
