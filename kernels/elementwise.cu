// loractl CUDA kernels, part 1: the row and elementwise ops of the training step, each the twin
// of a CPU backend op (internal/backend/cpu) with the same arguments and layout: row-major
// float32 buffers, explicit dimensions, gradients accumulated (+=) unless a comment says
// otherwise. Compiled to PTX (compute_80) by `go generate ./kernels` and embedded in the
// -tags cuda binary; the conformance suite checks every kernel against its CPU twin.
//
// Reductions are deterministic: each output is reduced by one block in a fixed tree order, and
// column sums (RMSNorm's dw) loop over rows in order, so results do not depend on scheduling.

#include <stdint.h>

#include "common.cuh"

#define LC_EXTERN extern "C" __global__

// RMSNormForward: out[n, :] = w · x[n, :] / sqrt(mean(x[n, :]²) + eps). One block per row.
// out (N, C), x (N, C), w (C).
LC_EXTERN void rmsnorm_forward(float *out, const float *x, const float *w, int N, int C, float eps) {
	int n = blockIdx.x;
	const float *xr = x + (size_t)n * C;
	float ss = 0.0f;
	for (int i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
	ss = blockSum(ss);
	float r = rsqrtf(ss / C + eps);
	float *or_ = out + (size_t)n * C;
	for (int i = threadIdx.x; i < C; i += blockDim.x) or_[i] = w[i] * (xr[i] * r);
}

// RMSNormBackward, rows: dx[n, i] += r·w[i]·dy[n, i] − x[n, i]·r³/C · Σ_j w[j]·dy[n, j]·x[n, j],
// and rstd[n] = r. dx (N, C) or NULL, rstd (N), dy (N, C), x (N, C), w (C). One block per row.
LC_EXTERN void rmsnorm_backward_rows(float *dx, float *rstd, const float *dy, const float *x, const float *w, int N, int C, float eps) {
	int n = blockIdx.x;
	const float *xr = x + (size_t)n * C, *dyr = dy + (size_t)n * C;
	float ss = 0.0f, dot = 0.0f;
	for (int i = threadIdx.x; i < C; i += blockDim.x) {
		ss += xr[i] * xr[i];
		dot += w[i] * dyr[i] * xr[i];
	}
	ss = blockSum(ss);
	dot = blockSum(dot);
	float r = rsqrtf(ss / C + eps);
	if (threadIdx.x == 0) rstd[n] = r;
	if (dx == NULL) return;
	float k = r * r * r * dot / C;
	float *dxr = dx + (size_t)n * C;
	for (int i = threadIdx.x; i < C; i += blockDim.x) dxr[i] += r * w[i] * dyr[i] - k * xr[i];
}

// RMSNormBackward, weight: dw[i] += Σ_n dy[n, i]·x[n, i]·rstd[n], summed over n in order. One
// thread per column. dw (C), dy (N, C), x (N, C), rstd (N).
LC_EXTERN void rmsnorm_backward_dw(float *dw, const float *dy, const float *x, const float *rstd, int N, int C) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= C) return;
	float s = 0.0f;
	for (int n = 0; n < N; n++) s += dy[(size_t)n * C + i] * x[(size_t)n * C + i] * rstd[n];
	dw[i] += s;
}

__device__ __forceinline__ float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

// SwiGLUForward: out = g·σ(g)·u. out (N) may alias g or u.
LC_EXTERN void swiglu_forward(float *out, const float *g, const float *u, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) {
		float gi = g[i], s = sigmoidf(gi);
		out[i] = (gi * s) * u[i];
	}
}

// SwiGLUBackward: dg += dout·u·σ(g)·(1 + g·(1 − σ(g))), du += dout·g·σ(g); dg or du may be NULL.
LC_EXTERN void swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) {
		float gi = g[i], s = sigmoidf(gi), d = dout[i];
		if (dg != NULL) dg[i] += d * u[i] * (s * (1.0f + gi * (1.0f - s)));
		if (du != NULL) du[i] += d * (gi * s);
	}
}

// RoPEForwardPos / RoPEBackwardPos (sign = 1 / −1): rotate every head of row n of x (N, NH, D)
// by sign·pos[n]·invFreq[i] in the rotate_half layout, in place. One thread per (n, h, i < D/2).
LC_EXTERN void rope_pos(float *x, const float *invFreq, const int32_t *pos, int N, int NH, int D, float sign) {
	int half = D / 2;
	long total = (long)N * NH * half;
	for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total; t += (long)gridDim.x * blockDim.x) {
		int i = t % half;
		long nh = t / half;
		int n = nh / NH;
		float theta = (float)pos[n] * invFreq[i];
		float s, c;
		sincosf(theta, &s, &c);
		s *= sign;
		float *row = x + nh * D;
		float x0 = row[i], x1 = row[i + half];
		row[i] = x0 * c - x1 * s;
		row[i + half] = x1 * c + x0 * s;
	}
}

// EmbeddingForward: out[n, :] = table[tokens[n], :]. out (N, C), table (V, C).
LC_EXTERN void embedding_forward(float *out, const float *table, const int32_t *tokens, int N, int C) {
	int n = blockIdx.x;
	const float *src = table + (size_t)tokens[n] * C;
	for (int i = threadIdx.x; i < C; i += blockDim.x) out[(size_t)n * C + i] = src[i];
}

// EmbeddingForward from a BF16 table (frozen weights kept as bfloat16 bits).
LC_EXTERN void embedding_forward_bf16(float *out, const uint16_t *table, const int32_t *tokens, int N, int C) {
	int n = blockIdx.x;
	const uint16_t *src = table + (size_t)tokens[n] * C;
	for (int i = threadIdx.x; i < C; i += blockDim.x) out[(size_t)n * C + i] = __uint_as_float((uint32_t)src[i] << 16);
}

// AddForward: out = a + b (N); out may alias a or b.
LC_EXTERN void add_forward(float *out, const float *a, const float *b, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) out[i] = a[i] + b[i];
}

// Axpy: y += alpha·x (N).
LC_EXTERN void axpy(float *y, const float *x, float alpha, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) y[i] += alpha * x[i];
}

// Scale: x *= alpha (N).
LC_EXTERN void scale(float *x, float alpha, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) x[i] *= alpha;
}

// Casts: float32 → bfloat16 bits (round to nearest even, NaN stays a quiet NaN) and back.
LC_EXTERN void cast_f32_bf16(uint16_t *dst, const float *src, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) {
		uint32_t b = __float_as_uint(src[i]);
		if ((b & 0x7fffffffu) > 0x7f800000u) {
			dst[i] = (uint16_t)((b >> 16) | 0x40);
		} else {
			dst[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
		}
	}
}

LC_EXTERN void cast_bf16_f32(float *dst, const uint16_t *src, long N) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) dst[i] = __uint_as_float((uint32_t)src[i] << 16);
}

// CrossEntropyForwardBackward, one block per row: losses[n] = logsumexp(logits[n, :]) −
// logits[n, targets[n]] (0 for target −100) when losses is not NULL; with dlogits not NULL,
// dlogits[n, :] = scale·(softmax − onehot) (0 for ignored rows, =, may be logits).
// losses (N) or NULL, dlogits (N, V) or NULL, logits (N, V), targets (N).
LC_EXTERN void cross_entropy(float *losses, float *dlogits, const float *logits, const int32_t *targets, int N, int V, float scale) {
	int n = blockIdx.x;
	int tg = targets[n];
	const float *row = logits + (size_t)n * V;
	float *drow = dlogits == NULL ? NULL : dlogits + (size_t)n * V;
	if (tg == -100) {
		if (threadIdx.x == 0 && losses != NULL) losses[n] = 0.0f;
		if (drow != NULL)
			for (int i = threadIdx.x; i < V; i += blockDim.x) drow[i] = 0.0f;
		return;
	}
	float lt = row[tg]; // read before drow (which may be row) is written
	float m = -INFINITY;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float v = row[i];
		m = (v != v || m != m) ? __int_as_float(0x7fc00000) : fmaxf(m, v);
	}
	m = blockMax(m);
	float s = 0.0f;
	for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(row[i] - m);
	s = blockSum(s);
	if (threadIdx.x == 0 && losses != NULL) losses[n] = logf(s) + (m - lt);
	if (drow == NULL) return;
	__syncthreads(); // every thread has read lt before row[tg] may be overwritten
	float k = scale / s;
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float g = expf(row[i] - m) * k;
		drow[i] = i == tg ? g - scale : g;
	}
}

// AdamW over one flat parameter tensor, in the operation order of internal/optim (torch's):
// decay, lerp of m by w1 (or its mirror form when w1 ≥ 0.5), v = β2·v + (w2·g)·g, then
// x += (negStep·m) / (sqrt(v)/sqrt(bc2) + eps). The __f*_rn intrinsics keep every operation rounded
// on its own (no contraction into FMAs), as the CPU code does, so the bits match.
LC_EXTERN void adamw(float *x, const float *grad, float *m, float *v, long N, float decay, float w1, float w1c, float beta2, float w2, float eps, float sqrtBC2, float negStep) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < N; i += (long)gridDim.x * blockDim.x) {
		float xi = x[i], g = grad[i], mi = m[i], vi = v[i];
		if (decay != 1.0f) xi = __fmul_rn(xi, decay);
		if (w1 < 0.5f) mi = __fadd_rn(mi, __fmul_rn(w1, __fsub_rn(g, mi)));
		else mi = __fsub_rn(g, __fmul_rn(__fsub_rn(g, mi), w1c));
		vi = __fadd_rn(__fmul_rn(vi, beta2), __fmul_rn(__fmul_rn(w2, g), g));
		float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sqrtBC2), eps);
		xi = __fadd_rn(xi, __fdiv_rn(__fmul_rn(negStep, mi), denom));
		x[i] = xi;
		m[i] = mi;
		v[i] = vi;
	}
}
