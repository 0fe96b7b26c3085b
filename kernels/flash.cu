// loractl CUDA kernels, part 3: flash-style attention for training (tiled, online softmax). The
// forward never forms the T×T matrix: it saves only the per-row logsumexp, and the backward
// recomputes each tile of scores from q, k and that logsumexp. Same masks and layout as
// attention_train_forward (causal, GQA, packed segment ids): q, dout, out (B, T, NH·D),
// k, v (B, T, NKV·D), seg (B·T) or NULL, lse and Di (B, NH, T). Plain fp32, D ≤ FA_DMAX.
//
// Every kernel runs with 128 threads (4 warps). A warp works on one row at a time (a query row,
// or a key row in the dk/dv kernel) and its 32 lanes take the 32 keys (or queries) of a tile, so
// the row's softmax statistics are warp reductions; each lane owns the output columns
// d = lane + 32·c. No atomics: dk and dv are summed over the query heads of a group by one block,
// in head order, so results do not depend on scheduling.

#include <stdint.h>

#include "common.cuh"

#define LC_EXTERN extern "C" __global__

#define FA_DMAX 128 // largest head dimension
#define FA_TILE 32  // keys (forward, dq) or queries (dk/dv) per tile: one per lane
#define FA_WARPS 4  // blockDim.x = 128
#define FA_COLS (FA_DMAX / 32)

__device__ __forceinline__ float warpSum(float v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
	return v;
}

__device__ __forceinline__ float warpMax(float v) {
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
	return v;
}

// visible: query t of batch b sees key s (both < T checked by the caller for t; s ≤ t < T).
__device__ __forceinline__ bool visible(const int32_t *seg, int b, int T, int t, int s) {
	return s <= t && (seg == NULL || seg[b * T + s] == seg[b * T + t]);
}

#define FWD_ROWS 4                      // query rows per warp
#define FWD_BQ (FWD_ROWS * FA_WARPS)    // query rows per block

// flash_attention_forward: one block per (b, h, tile of FWD_BQ query rows), grid
// B·NH·ceil(T/FWD_BQ). out = softmax(q·kᵀ/sqrt(D), masked)·v and lse[b, h, t] = the natural log of
// the row's Σ exp(score) (scores scaled by 1/sqrt(D)).
LC_EXTERN void flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
		const int32_t *seg, int B, int T, int NH, int NKV, int D) {
	__shared__ float sQ[FWD_BQ][FA_DMAX];
	__shared__ float sK[FA_TILE][FA_DMAX + 1];
	__shared__ float sV[FA_TILE][FA_DMAX];
	__shared__ float sP[FA_WARPS][FA_TILE];
	int tiles = (T + FWD_BQ - 1) / FWD_BQ;
	int bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * FWD_BQ;
	int b = bh / NH, h = bh % NH, kh = h / (NH / NKV);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	float scale = rsqrtf((float)D);
	for (int i = threadIdx.x; i < FWD_BQ * D; i += blockDim.x) {
		int r = i / D, d = i % D, t = q0 + r;
		sQ[r][d] = t < T ? q[((size_t)(b * T + t) * NH + h) * D + d] : 0.0f;
	}
	float m[FWD_ROWS], l[FWD_ROWS], acc[FWD_ROWS][FA_COLS];
	for (int r = 0; r < FWD_ROWS; r++) {
		m[r] = -INFINITY;
		l[r] = 0.0f;
		for (int c = 0; c < FA_COLS; c++) acc[r][c] = 0.0f;
	}
	int last = min(T, q0 + FWD_BQ) - 1; // the last key a row of this block sees
	for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
		__syncthreads(); // sQ is written; nobody reads the previous tile any more
		for (int i = threadIdx.x; i < FA_TILE * D; i += blockDim.x) {
			int j = i / D, d = i % D, s = k0 + j;
			size_t o = ((size_t)(b * T + s) * NKV + kh) * D + d;
			sK[j][d] = s < T ? k[o] : 0.0f;
			sV[j][d] = s < T ? v[o] : 0.0f;
		}
		__syncthreads();
		for (int r = 0; r < FWD_ROWS; r++) {
			int qr = warp * FWD_ROWS + r, t = q0 + qr;
			if (t >= T || k0 > t) continue; // the same for the whole warp
			bool vis = visible(seg, b, T, t, k0 + lane);
			float sc = -INFINITY;
			if (vis) {
				float d = 0.0f;
				for (int i = 0; i < D; i++) d += sQ[qr][i] * sK[lane][i];
				sc = d * scale;
			}
			float mt = warpMax(sc);
			if (mt == -INFINITY) continue; // no key of this tile is visible to row t
			float mn = fmaxf(m[r], mt);
			float p = vis ? expf(sc - mn) : 0.0f;
			float alpha = expf(m[r] - mn); // 0 on the first visible tile (m = −inf)
			l[r] = l[r] * alpha + warpSum(p);
			m[r] = mn;
			sP[warp][lane] = p;
			__syncwarp();
			for (int c = 0; c < FA_COLS; c++) {
				int d = lane + 32 * c;
				if (d >= D) break;
				float a = 0.0f;
				for (int j = 0; j < FA_TILE; j++) a += sP[warp][j] * sV[j][d];
				acc[r][c] = acc[r][c] * alpha + a;
			}
			__syncwarp(); // sP is read before the next row writes it
		}
	}
	for (int r = 0; r < FWD_ROWS; r++) {
		int t = q0 + warp * FWD_ROWS + r;
		if (t >= T) continue;
		float inv = 1.0f / l[r]; // l ≥ 1: every row sees its own key
		float *or_ = out + ((size_t)(b * T + t) * NH + h) * D;
		for (int c = 0; c < FA_COLS; c++) {
			int d = lane + 32 * c;
			if (d < D) or_[d] = acc[r][c] * inv;
		}
		if (lane == 0) lse[(size_t)bh * T + t] = m[r] + logf(l[r]);
	}
}

#define DQ_ROWS 2                    // query rows per warp
#define DQ_BQ (DQ_ROWS * FA_WARPS)   // query rows per block

// flash_attention_backward_q: one block per (b, h, tile of DQ_BQ query rows), grid
// B·NH·ceil(T/DQ_BQ). Writes Di[b, h, t] = Σ_d dout·out (which flash_attention_backward_kv
// reads) and, when dq is not NULL, adds dq_t += Σ_s ds_s·k_s with p_s = exp(score − lse_t) and
// ds_s = p_s·(dout_t·v_s − Di)/sqrt(D).
LC_EXTERN void flash_attention_backward_q(float *dq, float *Di, const float *dout, const float *out, const float *lse,
		const float *q, const float *k, const float *v, const int32_t *seg, int B, int T, int NH, int NKV, int D) {
	__shared__ float sQ[DQ_BQ][FA_DMAX];
	__shared__ float sG[DQ_BQ][FA_DMAX];
	__shared__ float sK[FA_TILE][FA_DMAX + 1];
	__shared__ float sV[FA_TILE][FA_DMAX + 1];
	__shared__ float sS[FA_WARPS][FA_TILE];
	int tiles = (T + DQ_BQ - 1) / DQ_BQ;
	int bh = blockIdx.x / tiles, q0 = (blockIdx.x % tiles) * DQ_BQ;
	int b = bh / NH, h = bh % NH, kh = h / (NH / NKV);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	float scale = rsqrtf((float)D);
	float L[DQ_ROWS], Dt[DQ_ROWS];
	for (int r = 0; r < DQ_ROWS; r++) {
		int t = q0 + warp * DQ_ROWS + r;
		L[r] = Dt[r] = 0.0f;
		if (t >= T) continue;
		size_t o = ((size_t)(b * T + t) * NH + h) * D;
		float s = 0.0f;
		for (int d = lane; d < D; d += 32) s += dout[o + d] * out[o + d];
		Dt[r] = warpSum(s);
		L[r] = lse[(size_t)bh * T + t];
		if (lane == 0) Di[(size_t)bh * T + t] = Dt[r];
	}
	if (dq == NULL) return; // the whole block
	for (int i = threadIdx.x; i < DQ_BQ * D; i += blockDim.x) {
		int r = i / D, d = i % D, t = q0 + r;
		size_t o = ((size_t)(b * T + t) * NH + h) * D + d;
		sQ[r][d] = t < T ? q[o] : 0.0f;
		sG[r][d] = t < T ? dout[o] : 0.0f;
	}
	float acc[DQ_ROWS][FA_COLS];
	for (int r = 0; r < DQ_ROWS; r++)
		for (int c = 0; c < FA_COLS; c++) acc[r][c] = 0.0f;
	int last = min(T, q0 + DQ_BQ) - 1;
	for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
		__syncthreads();
		for (int i = threadIdx.x; i < FA_TILE * D; i += blockDim.x) {
			int j = i / D, d = i % D, s = k0 + j;
			size_t o = ((size_t)(b * T + s) * NKV + kh) * D + d;
			sK[j][d] = s < T ? k[o] : 0.0f;
			sV[j][d] = s < T ? v[o] : 0.0f;
		}
		__syncthreads();
		for (int r = 0; r < DQ_ROWS; r++) {
			int qr = warp * DQ_ROWS + r, t = q0 + qr;
			if (t >= T || k0 > t) continue;
			float ds = 0.0f;
			if (visible(seg, b, T, t, k0 + lane)) {
				float sc = 0.0f, dp = 0.0f;
				for (int i = 0; i < D; i++) {
					sc += sQ[qr][i] * sK[lane][i];
					dp += sG[qr][i] * sV[lane][i];
				}
				float p = expf(sc * scale - L[r]);
				ds = p * (dp - Dt[r]) * scale;
			}
			sS[warp][lane] = ds;
			__syncwarp();
			for (int c = 0; c < FA_COLS; c++) {
				int d = lane + 32 * c;
				if (d >= D) break;
				float a = 0.0f;
				for (int j = 0; j < FA_TILE; j++) a += sS[warp][j] * sK[j][d];
				acc[r][c] += a;
			}
			__syncwarp();
		}
	}
	for (int r = 0; r < DQ_ROWS; r++) {
		int t = q0 + warp * DQ_ROWS + r;
		if (t >= T) continue;
		float *dqr = dq + ((size_t)(b * T + t) * NH + h) * D;
		for (int c = 0; c < FA_COLS; c++) {
			int d = lane + 32 * c;
			if (d < D) dqr[d] += acc[r][c];
		}
	}
}

#define KV_ROWS 2                    // key rows per warp
#define KV_BK (KV_ROWS * FA_WARPS)   // key rows per block

// flash_attention_backward_kv: one block per (b, kh, tile of KV_BK key rows), grid
// B·NKV·ceil(T/KV_BK), after flash_attention_backward_q has written Di. Over the query heads h of
// KV head kh in order and the queries t ≥ s: dv_s += Σ p·dout_t and dk_s += Σ ds·q_t (p and ds as
// in flash_attention_backward_q). dk, dv (B, T, NKV·D) or NULL each.
LC_EXTERN void flash_attention_backward_kv(float *dk, float *dv, const float *dout, const float *lse, const float *Di,
		const float *q, const float *k, const float *v, const int32_t *seg, int B, int T, int NH, int NKV, int D) {
	__shared__ float sK[KV_BK][FA_DMAX];
	__shared__ float sV[KV_BK][FA_DMAX];
	__shared__ float sQ[FA_TILE][FA_DMAX + 1];
	__shared__ float sG[FA_TILE][FA_DMAX + 1];
	__shared__ float sL[FA_TILE], sD[FA_TILE];
	__shared__ float sP[FA_WARPS][FA_TILE], sS[FA_WARPS][FA_TILE];
	int tiles = (T + KV_BK - 1) / KV_BK;
	int bk = blockIdx.x / tiles, s0 = (blockIdx.x % tiles) * KV_BK;
	int b = bk / NKV, kh = bk % NKV, groups = NH / NKV;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	float scale = rsqrtf((float)D);
	for (int i = threadIdx.x; i < KV_BK * D; i += blockDim.x) {
		int r = i / D, d = i % D, s = s0 + r;
		size_t o = ((size_t)(b * T + s) * NKV + kh) * D + d;
		sK[r][d] = s < T ? k[o] : 0.0f;
		sV[r][d] = s < T ? v[o] : 0.0f;
	}
	float ak[KV_ROWS][FA_COLS], av[KV_ROWS][FA_COLS];
	for (int r = 0; r < KV_ROWS; r++)
		for (int c = 0; c < FA_COLS; c++) ak[r][c] = av[r][c] = 0.0f;
	for (int h = kh * groups; h < (kh + 1) * groups; h++) {
		size_t bh = (size_t)b * NH + h;
		for (int t0 = s0; t0 < T; t0 += FA_TILE) { // queries before s0 see none of these keys
			__syncthreads();
			for (int i = threadIdx.x; i < FA_TILE * D; i += blockDim.x) {
				int j = i / D, d = i % D, t = t0 + j;
				size_t o = ((size_t)(b * T + t) * NH + h) * D + d;
				sQ[j][d] = t < T ? q[o] : 0.0f;
				sG[j][d] = t < T ? dout[o] : 0.0f;
			}
			if (threadIdx.x < FA_TILE) {
				int t = t0 + threadIdx.x;
				sL[threadIdx.x] = t < T ? lse[bh * T + t] : 0.0f;
				sD[threadIdx.x] = t < T ? Di[bh * T + t] : 0.0f;
			}
			__syncthreads();
			for (int r = 0; r < KV_ROWS; r++) {
				int kr = warp * KV_ROWS + r, s = s0 + kr, t = t0 + lane;
				if (s >= T) continue;
				float p = 0.0f, ds = 0.0f;
				if (t < T && visible(seg, b, T, t, s)) {
					float sc = 0.0f, dp = 0.0f;
					for (int i = 0; i < D; i++) {
						sc += sQ[lane][i] * sK[kr][i];
						dp += sG[lane][i] * sV[kr][i];
					}
					p = expf(sc * scale - sL[lane]);
					ds = p * (dp - sD[lane]) * scale;
				}
				sP[warp][lane] = p;
				sS[warp][lane] = ds;
				__syncwarp();
				for (int c = 0; c < FA_COLS; c++) {
					int d = lane + 32 * c;
					if (d >= D) break;
					float a = 0.0f, g = 0.0f;
					for (int j = 0; j < FA_TILE; j++) {
						a += sP[warp][j] * sG[j][d];
						g += sS[warp][j] * sQ[j][d];
					}
					av[r][c] += a;
					ak[r][c] += g;
				}
				__syncwarp();
			}
		}
	}
	for (int r = 0; r < KV_ROWS; r++) {
		int s = s0 + warp * KV_ROWS + r;
		if (s >= T) continue;
		size_t o = ((size_t)(b * T + s) * NKV + kh) * D;
		for (int c = 0; c < FA_COLS; c++) {
			int d = lane + 32 * c;
			if (d >= D) continue;
			if (dk != NULL) dk[o + d] += ak[r][c];
			if (dv != NULL) dv[o + d] += av[r][c];
		}
	}
}
