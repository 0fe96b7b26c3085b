//go:build cuda

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Our own prototypes of the few driver entry points the probe needs (CUDA driver API, stable
// since CUDA 4): CUresult and CUdevice are ints; cuDeviceTotalMem_v2 takes a size_t*.
typedef int lc_result;
typedef int lc_device;
typedef lc_result (*lc_cuInit)(unsigned int);
typedef lc_result (*lc_cuDriverGetVersion)(int *);
typedef lc_result (*lc_cuDeviceGetCount)(int *);
typedef lc_result (*lc_cuDeviceGet)(lc_device *, int);
typedef lc_result (*lc_cuDeviceGetName)(char *, int, lc_device);
typedef lc_result (*lc_cuDeviceTotalMem)(size_t *, lc_device);
typedef lc_result (*lc_cuDeviceGetAttribute)(int *, int, lc_device);
typedef lc_result (*lc_cuGetErrorString)(lc_result, const char **);

enum { LC_ATTR_CC_MAJOR = 75, LC_ATTR_CC_MINOR = 76, LC_MAX_DEVICES = 16 };

typedef struct {
	char libcuda[256], libcublas[256], err[512];
	int driver_version, count;
	char name[LC_MAX_DEVICES][256];
	size_t mem[LC_MAX_DEVICES];
	int cc_major[LC_MAX_DEVICES], cc_minor[LC_MAX_DEVICES];
} lc_report;

// lc_dlopen tries each name in turn and records the one that loaded.
static void *lc_dlopen(const char **names, int n, char *loaded, size_t cap) {
	for (int i = 0; i < n; i++) {
		if (names[i] == NULL || names[i][0] == 0) continue;
		void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (h != NULL) {
			snprintf(loaded, cap, "%s", names[i]);
			return h;
		}
	}
	return NULL;
}

static void lc_cuerr(lc_report *r, void *lib, const char *call, lc_result rc) {
	const char *s = NULL;
	lc_cuGetErrorString es = (lc_cuGetErrorString)dlsym(lib, "cuGetErrorString");
	if (es != NULL) es(rc, &s);
	snprintf(r->err, sizeof r->err, "%s failed: error %d (%s)", call, rc, s != NULL ? s : "unknown");
}

static void lc_probe(lc_report *r, const char *cublas_env) {
	memset(r, 0, sizeof *r);
	const char *blas[] = {cublas_env, "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"};
	void *hb = lc_dlopen(blas, 4, r->libcublas, sizeof r->libcublas);
	(void)hb; // kept open: the backend will use it

	const char *drv[] = {"libcuda.so.1"};
	void *h = lc_dlopen(drv, 1, r->libcuda, sizeof r->libcuda);
	if (h == NULL) {
		const char *e = dlerror();
		snprintf(r->err, sizeof r->err, "cannot load the NVIDIA driver library libcuda.so.1 (%s)", e != NULL ? e : "not found");
		return;
	}
	lc_cuInit init = (lc_cuInit)dlsym(h, "cuInit");
	lc_cuDriverGetVersion ver = (lc_cuDriverGetVersion)dlsym(h, "cuDriverGetVersion");
	lc_cuDeviceGetCount count = (lc_cuDeviceGetCount)dlsym(h, "cuDeviceGetCount");
	lc_cuDeviceGet get = (lc_cuDeviceGet)dlsym(h, "cuDeviceGet");
	lc_cuDeviceGetName name = (lc_cuDeviceGetName)dlsym(h, "cuDeviceGetName");
	lc_cuDeviceTotalMem mem = (lc_cuDeviceTotalMem)dlsym(h, "cuDeviceTotalMem_v2");
	lc_cuDeviceGetAttribute attr = (lc_cuDeviceGetAttribute)dlsym(h, "cuDeviceGetAttribute");
	if (!init || !ver || !count || !get || !name || !mem || !attr) {
		snprintf(r->err, sizeof r->err, "%s lacks a driver entry point (cuInit, cuDeviceGet...): the driver is too old or not NVIDIA's", r->libcuda);
		return;
	}
	lc_result rc;
	if ((rc = ver(&r->driver_version)) != 0) { lc_cuerr(r, h, "cuDriverGetVersion", rc); return; }
	if ((rc = init(0)) != 0) { lc_cuerr(r, h, "cuInit", rc); return; }
	if ((rc = count(&r->count)) != 0) { lc_cuerr(r, h, "cuDeviceGetCount", rc); return; }
	if (r->count > LC_MAX_DEVICES) r->count = LC_MAX_DEVICES;
	for (int i = 0; i < r->count; i++) {
		lc_device d;
		if ((rc = get(&d, i)) != 0) { lc_cuerr(r, h, "cuDeviceGet", rc); r->count = i; return; }
		if ((rc = name(r->name[i], sizeof r->name[i], d)) != 0) { lc_cuerr(r, h, "cuDeviceGetName", rc); r->count = i; return; }
		if ((rc = mem(&r->mem[i], d)) != 0) { lc_cuerr(r, h, "cuDeviceTotalMem", rc); r->count = i; return; }
		attr(&r->cc_major[i], LC_ATTR_CC_MAJOR, d);
		attr(&r->cc_minor[i], LC_ATTR_CC_MINOR, d);
	}
}
*/
import "C"

import (
	"os"
	"unsafe"
)

// Probe loads the driver and cuBLAS and lists the devices. It never fails: what is missing is
// in the report's Err.
func Probe() Report {
	var r C.lc_report
	env := C.CString(os.Getenv("LORACTL_CUBLAS"))
	defer C.free(unsafe.Pointer(env))
	C.lc_probe(&r, env)
	rep := Report{
		Built:         true,
		Devices:       []Device{},
		LibCUDA:       C.GoString(&r.libcuda[0]),
		LibCUBLAS:     C.GoString(&r.libcublas[0]),
		DriverVersion: int(r.driver_version),
		Err:           C.GoString(&r.err[0]),
	}
	for i := 0; i < int(r.count); i++ {
		rep.Devices = append(rep.Devices, Device{
			Index:        i,
			Name:         C.GoString(&r.name[i][0]),
			MemoryBytes:  uint64(r.mem[i]),
			ComputeMajor: int(r.cc_major[i]),
			ComputeMinor: int(r.cc_minor[i]),
		})
	}
	switch {
	case rep.Err != "":
	case len(rep.Devices) == 0:
		rep.Err = "the driver reports no CUDA device"
	case rep.LibCUBLAS == "":
		rep.Err = "cuBLAS not found (tried $LORACTL_CUBLAS, libcublas.so.13, .12, .11): install the CUDA runtime libraries or point LORACTL_CUBLAS at libcublas.so"
	}
	return rep
}
