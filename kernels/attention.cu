// loractl CUDA kernels, part 2: the inference ops not in elementwise.cu. Same conventions.

#include <stdint.h>

#include "common.cuh"

#define LC_EXTERN extern "C" __global__

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
	m = blockMax(m);
	float sum = 0.0f;
	for (int s = threadIdx.x; s < n; s += blockDim.x) {
		float e = expf(ar[s] - m);
		ar[s] = e;
		sum += e;
	}
	sum = blockSum(sum);
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

// AttentionTrainForward over whole sequences, one block per query row (b, h, t): saves the
// probabilities att (B, NH, T, T), 0 where masked (s > t, or another segment when seg is not
// NULL), and out (B, T, NH·D). q (B, T, NH·D), k, v (B, T, NKV·D), seg (B·T) or NULL.
LC_EXTERN void attention_train_forward(float *out, float *att, const float *q, const float *k, const float *v,
		const int32_t *seg, int B, int T, int NH, int NKV, int D) {
	int row = blockIdx.x; // ((b·NH) + h)·T + t
	int t = row % T, bh = row / T, h = bh % NH, b = bh / NH;
	int kh = h / (NH / NKV);
	float scale = rsqrtf((float)D);
	const float *qr = q + ((size_t)(b * T + t) * NH + h) * D;
	float *ar = att + (size_t)row * T;
	int st = seg == NULL ? 0 : seg[b * T + t];
	for (int s = threadIdx.x; s < T; s += blockDim.x) {
		float d = -INFINITY;
		if (s <= t && (seg == NULL || seg[b * T + s] == st)) {
			const float *kr = k + ((size_t)(b * T + s) * NKV + kh) * D;
			d = 0.0f;
			for (int i = 0; i < D; i++) d += qr[i] * kr[i];
			d *= scale;
		}
		ar[s] = d;
	}
	__syncthreads();
	float m = -INFINITY;
	for (int s = threadIdx.x; s <= t; s += blockDim.x) m = fmaxf(m, ar[s]);
	m = blockMax(m);
	float sum = 0.0f;
	for (int s = threadIdx.x; s < T; s += blockDim.x) {
		float e = s <= t ? expf(ar[s] - m) : 0.0f; // expf(-inf) = 0 for masked keys
		ar[s] = e;
		sum += e;
	}
	sum = blockSum(sum);
	float inv = 1.0f / sum;
	for (int s = threadIdx.x; s <= t; s += blockDim.x) ar[s] *= inv;
	__syncthreads();
	float *or_ = out + ((size_t)(b * T + t) * NH + h) * D;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float o = 0.0f;
		for (int s = 0; s <= t; s++) o += ar[s] * v[((size_t)(b * T + s) * NKV + kh) * D + i];
		or_[i] = o;
	}
}

// AttentionBackward, query side, one block per query row (b, h, t): with dp_s = dout_t·v_s and
// ds_s = att_s·(dp_s − Σ att·dp)/sqrt(D), writes ds into dS (B, NH, T, T) (0 where masked) and
// adds dq_t += Σ_s ds_s·k_s when dq is not NULL.
LC_EXTERN void attention_backward_q(float *dq, float *dS, const float *dout, const float *att, const float *k,
		const float *v, int B, int T, int NH, int NKV, int D) {
	int row = blockIdx.x;
	int t = row % T, bh = row / T, h = bh % NH, b = bh / NH;
	int kh = h / (NH / NKV);
	float scale = rsqrtf((float)D);
	const float *gr = dout + ((size_t)(b * T + t) * NH + h) * D;
	const float *ar = att + (size_t)row * T;
	float *dr = dS + (size_t)row * T;
	float pdp = 0.0f;
	for (int s = threadIdx.x; s < T; s += blockDim.x) {
		float dp = 0.0f;
		if (s <= t && ar[s] != 0.0f) {
			const float *vr = v + ((size_t)(b * T + s) * NKV + kh) * D;
			for (int i = 0; i < D; i++) dp += gr[i] * vr[i];
		}
		dr[s] = dp;
		pdp += ar[s] * dp;
	}
	pdp = blockSum(pdp);
	for (int s = threadIdx.x; s < T; s += blockDim.x) dr[s] = ar[s] * (dr[s] - pdp) * scale;
	__syncthreads();
	if (dq == NULL) return;
	float *dqr = dq + ((size_t)(b * T + t) * NH + h) * D;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float acc = 0.0f;
		for (int s = 0; s <= t; s++) acc += dr[s] * k[((size_t)(b * T + s) * NKV + kh) * D + i];
		dqr[i] += acc;
	}
}

// AttentionBackward, key side, one block per key row (b, kh, s): dk_s += Σ_h Σ_t dS[b,h,t,s]·q_t
// and dv_s += Σ_h Σ_t att[b,h,t,s]·dout_t over the query heads h of KV head kh, in order.
// dk, dv (B, T, NKV·D) or NULL each.
LC_EXTERN void attention_backward_kv(float *dk, float *dv, const float *dS, const float *att, const float *q,
		const float *dout, int B, int T, int NH, int NKV, int D) {
	int row = blockIdx.x; // ((b·NKV) + kh)·T + s
	int s = row % T, bk = row / T, kh = bk % NKV, b = bk / NKV;
	int groups = NH / NKV;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float ak = 0.0f, av = 0.0f;
		for (int h = kh * groups; h < (kh + 1) * groups; h++) {
			const float *dsr = dS + (size_t)(b * NH + h) * T * T;
			const float *atr = att + (size_t)(b * NH + h) * T * T;
			for (int t = s; t < T; t++) {
				size_t qo = ((size_t)(b * T + t) * NH + h) * D + i;
				ak += dsr[(size_t)t * T + s] * q[qo];
				av += atr[(size_t)t * T + s] * dout[qo];
			}
		}
		size_t ko = ((size_t)(b * T + s) * NKV + kh) * D + i;
		if (dk != NULL) dk[ko] += ak;
		if (dv != NULL) dv[ko] += av;
	}
}

// EmbeddingBackward: dtable[tokens[n], c] += dout[n, c], one thread per column c, tokens in order
// (deterministic). dtable (V, C), dout (N, C).
LC_EXTERN void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int N, int C) {
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= C) return;
	for (int n = 0; n < N; n++) dtable[(size_t)tokens[n] * C + c] += dout[(size_t)n * C + c];
}

// col_scale: y[n, o] = x[n, o]·c[o] (+ bias[o] when bias is not NULL), DoRA's column scaling;
// y may alias x. y, x (N, OC), c, bias (OC).
LC_EXTERN void col_scale(float *y, const float *x, const float *c, const float *bias, int N, int OC) {
	long total = (long)N * OC;
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
		int o = (int)(i % OC);
		float v = __fmul_rn(x[i], c[o]);
		y[i] = bias ? v + bias[o] : v;
	}
}

// col_scale_backward: dc[o] += Σ_n dy[n, o]·x[n, o] and dx[n, o] = dy[n, o]·c[o], one thread per
// column, rows in order; dx may alias dy. dx, dy, x (N, OC), dc, c (OC).
LC_EXTERN void col_scale_backward(float *dx, float *dc, const float *dy, const float *x, const float *c, int N, int OC) {
	int o = blockIdx.x * blockDim.x + threadIdx.x;
	if (o >= OC) return;
	float s = 0.0f, co = c[o];
	for (int n = 0; n < N; n++) {
		size_t i = (size_t)n * OC + o;
		float g = dy[i];
		s += g * x[i];
		dx[i] = g * co;
	}
	dc[o] += s;
}

// bias_backward: dbias[o] += Σ_n dy[n, o], one thread per column, rows in order. dy (N, OC).
LC_EXTERN void bias_backward(float *dbias, const float *dy, int N, int OC) {
	int o = blockIdx.x * blockDim.x + threadIdx.x;
	if (o >= OC) return;
	float s = 0.0f;
	for (int n = 0; n < N; n++) s += dy[(size_t)n * OC + o];
	dbias[o] += s;
}
