// Block-wide reductions shared by the kernels (included by every .cu file).
#pragma once

// blockSum returns the sum of v over the block (blockDim.x a multiple of 32, ≤ 1024) in a fixed
// order: a warp shuffle tree, then the warp sums by warp 0. Every thread gets the result.
__device__ float blockSum(float v) {
	__shared__ float warpSums[32];
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	__syncthreads(); // warpSums may still be read by a previous call
	if (lane == 0) warpSums[warp] = v;
	__syncthreads();
	int nw = blockDim.x >> 5;
	v = lane < nw ? warpSums[lane] : 0.0f;
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
	return v;
}

// blockMax is blockSum with max (NaN-propagating: fmaxf would drop a NaN, so NaN is tracked).
__device__ float blockMax(float v) {
	__shared__ float warpMax[32];
	for (int o = 16; o > 0; o >>= 1) {
		float w = __shfl_xor_sync(0xffffffff, v, o);
		v = (v != v || w != w) ? __int_as_float(0x7fc00000) : fmaxf(v, w);
	}
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	__syncthreads();
	if (lane == 0) warpMax[warp] = v;
	__syncthreads();
	int nw = blockDim.x >> 5;
	v = lane < nw ? warpMax[lane] : -INFINITY;
	for (int o = 16; o > 0; o >>= 1) {
		float w = __shfl_xor_sync(0xffffffff, v, o);
		v = (v != v || w != w) ? __int_as_float(0x7fc00000) : fmaxf(v, w);
	}
	return v;
}
