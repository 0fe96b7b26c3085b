// A stand-in for the NVIDIA driver library (libcuda.so.1) with one device, for testing the
// probe's dlopen shim on machines without a GPU. Built by probe_cuda_test.go with gcc.
#include <stddef.h>
#include <string.h>

int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuInit(unsigned int flags) { return flags == 0 ? 0 : 1; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int i) { if (i != 0) return 101; *d = 0; return 0; }
int cuDeviceGetName(char *s, int n, int d) { strncpy(s, "Fake GPU 80GB", (size_t)n); return 0; }
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = (size_t)80 << 30; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) {
	*v = attr == 75 ? 9 : attr == 76 ? 0 : -1;
	return 0;
}
int cuGetErrorString(int rc, const char **s) { *s = "fake error"; return 0; }

// Memory: device pointers are host pointers from malloc. Allocations over 1 GiB fail with
// CUDA_ERROR_OUT_OF_MEMORY (2), so that the allocator's retry path can be tested.
#include <stdlib.h>
static long live_blocks;
static size_t live_bytes;
typedef unsigned long long dptr;
int cuDevicePrimaryCtxRetain(void **ctx, int d) { static int c; *ctx = &c; return d == 0 ? 0 : 101; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxSetCurrent(void *ctx) { return 0; }
int cuCtxSynchronize(void) { return 0; }
int cuMemAlloc_v2(dptr *p, size_t n) {
	if (n > ((size_t)1 << 30)) return 2;
	void *m = malloc(n);
	if (m == NULL) return 2;
	*p = (dptr)(size_t)m;
	live_blocks++;
	live_bytes += n;
	return 0;
}
int cuMemFree_v2(dptr p) { free((void *)(size_t)p); live_blocks--; return 0; }
int cuMemcpyHtoD_v2(dptr d, const void *s, size_t n) { memcpy((void *)(size_t)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void *d, dptr s, size_t n) { memcpy(d, (void *)(size_t)s, n); return 0; }
int cuMemcpyDtoD_v2(dptr d, dptr s, size_t n) { memmove((void *)(size_t)d, (void *)(size_t)s, n); return 0; }
int cuMemGetInfo_v2(size_t *f, size_t *t) { *t = (size_t)80 << 30; *f = *t - live_bytes; return 0; }
