// Kernels with the bugs the emulator must catch (emu's faults_test.go launches each one and
// expects the launch to fail, or its output to show the bug). Not part of kernels.Modules.

#include <stdint.h>

#define LC_EXTERN extern "C" __global__

// A thread leaves before a barrier the others wait at.
LC_EXTERN void fault_exit_before_barrier(float *out) {
	if (threadIdx.x == 5) return;
	__syncthreads();
	out[threadIdx.x] = 1.0f;
}

// Two halves of the block wait at different barriers.
LC_EXTERN void fault_split_barrier(float *out) {
	if (threadIdx.x < 32) {
		__syncthreads();
	} else {
		__syncthreads();
	}
	out[threadIdx.x] = 1.0f;
}

// A lane of the warp has exited before a full-mask shuffle.
LC_EXTERN void fault_shuffle_exited_lane(float *out) {
	if (threadIdx.x == 3) return;
	out[threadIdx.x] = __shfl_xor_sync(0xffffffff, (float)threadIdx.x, 1);
}

// A full-mask shuffle in a block whose last warp is partial (blockDim not a multiple of 32).
LC_EXTERN void fault_shuffle_partial_warp(float *out) {
	out[threadIdx.x] = __shfl_xor_sync(0xffffffff, (float)threadIdx.x, 16);
}

// The halves of a warp at different shuffles.
LC_EXTERN void fault_shuffle_diverged(float *out) {
	float v = (float)threadIdx.x;
	if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffff, v, 1);
	else v = __shfl_xor_sync(0xffffffff, v, 2);
	out[threadIdx.x] = v;
}

// Lanes 0..15 read lane 20, which is not in their mask.
LC_EXTERN void fault_shuffle_inactive_source(float *out) {
	float v = (float)threadIdx.x;
	if (threadIdx.x < 16) v = __shfl_sync(0x0000ffff, v, 20);
	out[threadIdx.x] = v;
}

// One element past the end of out.
LC_EXTERN void fault_out_of_bounds(float *out, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i <= n) out[i] = 1.0f;
}

// A write to an input.
LC_EXTERN void fault_write_input(float *out, const float *x, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) {
		((float *)x)[i] = 0.0f;
		out[i] = 1.0f;
	}
}

// The last element is never written.
LC_EXTERN void fault_unwritten(float *out, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n - 1) out[i] = 1.0f;
}

// A missing barrier between the shared-memory write and the neighbour's read.
LC_EXTERN void fault_race(float *out, const float *x) {
	__shared__ float s[256];
	s[threadIdx.x] = x[threadIdx.x];
	out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Block 1 reads shared memory only block 0 wrote.
LC_EXTERN void fault_stale_shared(float *out) {
	__shared__ float s[1];
	if (blockIdx.x == 0 && threadIdx.x == 0) s[0] = 2.0f;
	__syncthreads();
	if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// The same reductions written correctly: must pass.
LC_EXTERN void fault_none(float *out, const float *x) {
	__shared__ float s[256];
	s[threadIdx.x] = x[threadIdx.x];
	__syncthreads();
	float v = s[(threadIdx.x + 1) % blockDim.x];
	for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
	out[threadIdx.x] = __shfl_sync(0xffffffff, v, 0);
}
