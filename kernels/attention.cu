// loractl CUDA kernels, part 2: the inference ops not in elementwise.cu. Same conventions.

#include <stdint.h>

#define LC_EXTERN extern "C" __global__

__device__ float blockSumA(float v) {
	__shared__ float s[32];
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	__syncthreads();
	if (lane == 0) s[warp] = v;
	__syncthreads();
	v = lane < (int)(blockDim.x >> 5) ? s[lane] : 0.0f;
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
	return v;
}

__device__ float blockMaxA(float v) {
	__shared__ float s[32];
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	__syncthreads();
	if (lane == 0) s[warp] = v;
	__syncthreads();
	v = lane < (int)(blockDim.x >> 5) ? s[lane] : -INFINITY;
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
	return v;
}

// AttentionForward over a KV cache: one block per query row (b, h, t). Query t of batch b is at
// position pos0+t and attends to keys 0..pos0+t of KV head h/(NH/NKV); scores go to the scratch
// row att (L = pos0+T floats per row), then out = Σ softmax·v.
// out (B, T, NH·D), q (B, T, NH·D), k, v (B, S, NKV·D), att (B·NH·T, L) scratch.
LC_EXTERN void attention_forward(float *out, const float *q, const float *k, const float *v, float *att,
		int B, int T, int S, int pos0, int NH, int NKV, int D) {
	int row = blockIdx.x; // ((b·NH) + h)·T + t
	int t = row % T, bh = row / T, h = bh % NH, b = bh / NH;
	int kh = h / (NH / NKV), L = pos0 + T, n = pos0 + t + 1;
	float scale = rsqrtf((float)D);
	const float *qr = q + ((size_t)(b * T + t) * NH + h) * D;
	float *ar = att + (size_t)row * L;
	for (int s = threadIdx.x; s < n; s += blockDim.x) {
		const float *kr = k + ((size_t)(b * S + s) * NKV + kh) * D;
		float d = 0.0f;
		for (int i = 0; i < D; i++) d += qr[i] * kr[i];
		ar[s] = d * scale;
	}
	__syncthreads();
	float m = -INFINITY;
	for (int s = threadIdx.x; s < n; s += blockDim.x) m = fmaxf(m, ar[s]);
	m = blockMaxA(m);
	float sum = 0.0f;
	for (int s = threadIdx.x; s < n; s += blockDim.x) {
		float e = expf(ar[s] - m);
		ar[s] = e;
		sum += e;
	}
	sum = blockSumA(sum);
	__syncthreads();
	float inv = 1.0f / sum;
	float *or_ = out + ((size_t)(b * T + t) * NH + h) * D;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float o = 0.0f;
		for (int s = 0; s < n; s++) o += ar[s] * v[((size_t)(b * S + s) * NKV + kh) * D + i];
		or_[i] = o * inv;
	}
}

// add_bias: y[n, :] += bias (N rows of OC).
LC_EXTERN void add_bias(float *y, const float *bias, int N, int OC) {
	long total = (long)N * OC;
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) y[i] += bias[i % OC];
}
