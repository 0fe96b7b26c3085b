// A stand-in for cuBLAS over the stand-in driver (device pointers are host pointers): a plain
// column-major sgemm, to test how the backend maps its row-major products onto cuBLAS.
#include <stddef.h>
int cublasCreate_v2(void **h) { static int x; *h = &x; return 0; }
int cublasDestroy_v2(void *h) { return 0; }
int cublasSgemm_v2(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
	const float *B, int ldb, const float *beta, float *C, int ldc) {
	for (int j = 0; j < n; j++) {
		for (int i = 0; i < m; i++) {
			double s = 0;
			for (int p = 0; p < k; p++) {
				float a = ta ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda];
				float b = tb ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb];
				s += (double)a * b;
			}
			float *c = &C[i + (size_t)j * ldc];
			*c = (float)(*alpha * s) + (*beta == 0 ? 0 : *beta * *c); // beta 0: C is not read
		}
	}
	return 0;
}
