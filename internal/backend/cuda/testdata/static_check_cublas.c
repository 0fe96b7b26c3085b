// Checks the shim's cuBLAS prototypes and constants (driver_cuda.go) against cublas_v2.h,
// where it is installed: compiled with gcc -fsyntax-only -Werror by TestShimMatchesHeaders.
#include <stddef.h>
#include <cublas_v2.h>

_Static_assert(sizeof(cublasStatus_t) == sizeof(int), "cublasStatus_t is an int");
_Static_assert(sizeof(cublasHandle_t) == sizeof(void *), "cublasHandle_t is a pointer");
_Static_assert(CUBLAS_STATUS_SUCCESS == 0, "success is 0");
_Static_assert(CUBLAS_OP_N == 0 && CUBLAS_OP_T == 1, "the transpose flags the shim passes");

cublasStatus_t (*const p_create)(cublasHandle_t *) = cublasCreate_v2;
cublasStatus_t (*const p_destroy)(cublasHandle_t) = cublasDestroy_v2;
cublasStatus_t (*const p_sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
	const float *, const float *, int, const float *, int, const float *, float *, int) = cublasSgemm_v2;
