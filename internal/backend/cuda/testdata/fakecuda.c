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
