// cuda_emu.h: what loractl's .cu files need from CUDA, as plain C++17, so that g++ compiles them
// and the kernels run on the CPU (kernels/emu/README.md):
//
//	g++ -std=c++17 -O1 -x c++ -include kernels/emu/cuda_emu.h kernels/attention.cu ...
//
// The threads of a block run as cooperative fibers on one OS thread (harness/runtime.cpp): each runs
// until it reaches __syncthreads, a warp-level operation (shuffle, vote, __syncwarp) or its end,
// then the next one runs. A barrier releases when every thread of the block has arrived; a warp
// operation completes when every lane of its mask has arrived, and exchanges the values then.
// Mismatches that hang or corrupt a real GPU (a thread exits while the others wait at a barrier,
// lanes of one warp at different barriers, a shuffle reading an inactive lane) stop the launch
// with a message. Blocks run one after another; __shared__ variables live in one section that is
// poisoned (all bits set: NaN) before each block, so every block starts with unwritten shared
// memory, as on the GPU.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct uint3 {
	unsigned x, y, z;
};

struct dim3 {
	unsigned x, y, z;
	dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// The launch state the running fiber sees (set by the scheduler before every switch).
extern uint3 threadIdx_, blockIdx_;
extern dim3 blockDim_, gridDim_;

// Warp operation kinds.
enum WarpOp { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

void syncthreads(const char *file, int line);
// warp runs one warp-level operation for the current lane: the operand bits and the lane
// argument (source lane, delta or lane mask), and returns the 64 result bits.
uint64_t warp(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char *file, int line);

template <class T> inline uint64_t to_bits(T v) {
	static_assert(sizeof(T) <= 8, "warp operands are at most 8 bytes");
	uint64_t b = 0;
	memcpy(&b, &v, sizeof(T));
	return b;
}
template <class T> inline T from_bits(uint64_t b) {
	T v;
	memcpy(&v, &b, sizeof(T));
	return v;
}

template <class T> inline T shfl(WarpOp op, const char *file, int line, unsigned mask, T v, int arg, int width = 32) {
	return from_bits<T>(warp(op, mask, to_bits(v), arg, width, file, line));
}

} // namespace emu

#define threadIdx (::emu::threadIdx_)
#define blockIdx (::emu::blockIdx_)
#define blockDim (::emu::blockDim_)
#define gridDim (::emu::gridDim_)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Every __shared__ variable (a static local of a kernel or device function) goes to one section,
// which the launcher poisons before each block: blocks run in turn, each on fresh shared memory.
#define __shared__ static __attribute__((section("emu_shared")))

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::warp(::emu::kSyncWarp, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 0xffffffffu, 0, 0, 32, __FILE__, __LINE__)
#define __shfl_sync(...) ::emu::shfl(::emu::kShflIdx, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl(::emu::kShflUp, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl(::emu::kShflDown, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl(::emu::kShflXor, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) ((unsigned)::emu::warp(::emu::kBallot, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) ((int)::emu::warp(::emu::kAny, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) ((int)::emu::warp(::emu::kAll, mask, (pred) != 0, 0, 32, __FILE__, __LINE__))

// Bit casts.
inline float __int_as_float(int i) { return ::emu::from_bits<float>((uint32_t)i); }
inline int __float_as_int(float f) { return (int)::emu::to_bits(f); }
inline float __uint_as_float(unsigned u) { return ::emu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)::emu::to_bits(f); }

// Math intrinsics: the correctly rounded C library functions (the GPU's fast forms differ by a
// few ulp, inside every tolerance the checks use). Each _rn operation is one IEEE operation; the
// harness is compiled with -ffp-contract=off so none is fused.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
template <class T> inline T __ldg(const T *p) { return *p; }

// Atomics: fibers never preempt each other, so a plain read-modify-write is atomic here.
template <class T> inline T atomicAdd(T *p, T v) {
	T old = *p;
	*p = old + v;
	return old;
}
template <class T> inline T atomicSub(T *p, T v) {
	T old = *p;
	*p = old - v;
	return old;
}
template <class T> inline T atomicExch(T *p, T v) {
	T old = *p;
	*p = v;
	return old;
}
template <class T> inline T atomicMax(T *p, T v) {
	T old = *p;
	if (v > old) *p = v;
	return old;
}
template <class T> inline T atomicMin(T *p, T v) {
	T old = *p;
	if (v < old) *p = v;
	return old;
}
template <class T> inline T atomicCAS(T *p, T cmp, T v) {
	T old = *p;
	if (old == cmp) *p = v;
	return old;
}
inline void __threadfence() {}
inline void __threadfence_block() {}
