// runtime.cpp: the emulator's scheduler, memory and command line. It reads one launch
// description on stdin (kernels/emu/README.md), runs the kernel block by block with every thread
// of a block a fiber, and writes the output buffers back to their files.
//
// Compiled with the .cu files and a registry (written by the Go test driver):
//
//	g++ -std=c++17 -O1 -ffp-contract=off -include cuda_emu.h runtime.cpp registry.cpp
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "../launch.h"

namespace emu {

uint3 threadIdx_, blockIdx_;
dim3 blockDim_, gridDim_;

namespace {

const char *kernelName = "(no kernel)";
int cur = -1; // the running fiber, -1 in the scheduler
bool inBlock = false;

enum State { kReady, kBarrier, kWarp, kDone };

const char *opName(WarpOp op) {
	switch (op) {
	case kShflIdx: return "__shfl_sync";
	case kShflUp: return "__shfl_up_sync";
	case kShflDown: return "__shfl_down_sync";
	case kShflXor: return "__shfl_xor_sync";
	case kBallot: return "__ballot_sync";
	case kAny: return "__any_sync";
	case kAll: return "__all_sync";
	case kSyncWarp: return "__syncwarp";
	}
	return "?";
}

struct Fiber {
	ucontext_t ctx;        // the first switch into the fiber (makecontext)
	jmp_buf jb;            // every later one (_setjmp/_longjmp: no signal-mask system call)
	bool started = false;
	char *stack = nullptr; // lowest page is a guard
	State st = kReady;
	uint3 tid{};
	const char *file = "";
	int line = 0;
	WarpOp op = kSyncWarp;
	unsigned mask = 0;
	uint64_t bits = 0, result = 0;
	int arg = 0, width = 32;
};

const size_t kPage = 4096;
const size_t kStack = 256 * 1024;
std::vector<Fiber> fibers;
jmp_buf schedJB;
Body body;

} // namespace

void fail(const char *fmt, ...) {
	fprintf(stderr, "emu: %s", kernelName);
	if (inBlock) fprintf(stderr, " block (%u,%u,%u)", blockIdx_.x, blockIdx_.y, blockIdx_.z);
	if (cur >= 0) fprintf(stderr, " thread (%u,%u,%u)", threadIdx_.x, threadIdx_.y, threadIdx_.z);
	fprintf(stderr, ": ");
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

namespace {

void entry() {
	body();
	fibers[cur].st = kDone;
	_longjmp(schedJB, 1); // never resumed
}

// park returns to the scheduler; the scheduler resumes the fiber here.
void park() {
	if (_setjmp(fibers[cur].jb) == 0) _longjmp(schedJB, 1);
}

// resume runs fiber i until it parks or ends.
void resume(int i) {
	Fiber &f = fibers[i];
	if (_setjmp(schedJB) != 0) return;
	if (!f.started) {
		f.started = true;
		setcontext(&f.ctx);
	}
	_longjmp(f.jb, 1);
}

} // namespace

void syncthreads(const char *file, int line) {
	if (cur < 0) fail("__syncthreads outside a kernel");
	Fiber &f = fibers[cur];
	f.st = kBarrier;
	f.file = file;
	f.line = line;
	park();
}

uint64_t warp(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char *file, int line) {
	if (cur < 0) fail("%s outside a kernel", opName(op));
	if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail("%s at %s:%d: width %d is not a power of 2 up to 32", opName(op), file, line, width);
	Fiber &f = fibers[cur];
	f.st = kWarp;
	f.op = op;
	f.mask = mask;
	f.bits = bits;
	f.arg = arg;
	f.width = width;
	f.file = file;
	f.line = line;
	park();
	return f.result;
}

namespace {

// resolveWarp completes the pending warp operations of warp w (lanes w·32 … of n threads), or
// stops the launch when one cannot complete. It returns whether any completed.
bool resolveWarp(int w, int n) {
	int base = w * 32, lanes = n - base < 32 ? n - base : 32;
	unsigned valid = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
	bool any = false;
	for (int l = 0; l < lanes; l++) {
		Fiber &a = fibers[base + l];
		if (a.st != kWarp) continue;
		unsigned M = a.mask;
		if ((M & (1u << l)) == 0) fail("thread %d calls %s at %s:%d with mask %#x, which does not contain its own lane %d", base + l, opName(a.op), a.file, a.line, M, l);
		if (M & ~valid) fail("%s at %s:%d: mask %#x names lanes beyond the %d threads of warp %d (blockDim %u)", opName(a.op), a.file, a.line, M, lanes, w, blockDim_.x * blockDim_.y * blockDim_.z);
		for (int j = 0; j < lanes; j++) {
			if ((M & (1u << j)) == 0) continue;
			Fiber &b = fibers[base + j];
			if (b.st == kDone) fail("thread %d waits at %s (%s:%d, mask %#x) but lane %d of its warp (thread %d) has exited", base + l, opName(a.op), a.file, a.line, M, j, base + j);
			if (b.st == kBarrier) fail("divergence: thread %d waits at %s (%s:%d) while thread %d of its mask waits at __syncthreads (%s:%d)", base + l, opName(a.op), a.file, a.line, base + j, b.file, b.line);
			if (b.op != a.op || b.mask != M || b.file != a.file || b.line != a.line || b.width != a.width)
				fail("divergence: lanes of warp %d at different warp operations: thread %d at %s (%s:%d, mask %#x), thread %d at %s (%s:%d, mask %#x)", w, base + l, opName(a.op), a.file, a.line, M, base + j, opName(b.op), b.file, b.line, b.mask);
		}
		unsigned ballot = 0;
		for (int j = 0; j < lanes; j++)
			if ((M & (1u << j)) && fibers[base + j].bits != 0) ballot |= 1u << j;
		for (int j = 0; j < lanes; j++) {
			if ((M & (1u << j)) == 0) continue;
			Fiber &b = fibers[base + j];
			int seg = j & ~(b.width - 1), s = j;
			switch (b.op) {
			case kShflIdx: s = seg + (b.arg & (b.width - 1)); break;
			case kShflUp: s = j - b.arg >= seg ? j - b.arg : j; break;
			case kShflDown: s = j + b.arg < seg + b.width ? j + b.arg : j; break;
			case kShflXor: s = (j ^ b.arg) < seg + b.width && (j ^ b.arg) >= seg ? j ^ b.arg : j; break;
			default: break;
			}
			switch (b.op) {
			case kShflIdx:
			case kShflUp:
			case kShflDown:
			case kShflXor:
				if (s < 0 || s >= lanes || (M & (1u << s)) == 0) fail("%s at %s:%d: lane %d reads lane %d, which is not in the mask %#x (undefined on the GPU)", opName(b.op), b.file, b.line, j, s, M);
				b.result = fibers[base + s].bits;
				break;
			case kBallot: b.result = ballot; break;
			case kAny: b.result = ballot != 0; break;
			case kAll: b.result = ballot == M; break;
			case kSyncWarp: b.result = 0; break;
			}
		}
		for (int j = 0; j < lanes; j++)
			if (M & (1u << j)) fibers[base + j].st = kReady;
		any = true;
	}
	return any;
}

extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

// runBlock runs the n threads of the current block to their end.
void runBlock(int n, bool reverse) {
	if (__start_emu_shared != nullptr) memset(__start_emu_shared, 0xff, __stop_emu_shared - __start_emu_shared);
	for (int i = 0; i < n; i++) {
		Fiber &f = fibers[i];
		if (f.stack == nullptr) {
			void *p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED) fail("out of memory for thread stacks");
			f.stack = (char *)p;
			mprotect(f.stack, kPage, PROT_NONE);
		}
		getcontext(&f.ctx);
		f.ctx.uc_stack.ss_sp = f.stack + kPage;
		f.ctx.uc_stack.ss_size = kStack - kPage;
		f.ctx.uc_link = nullptr;
		makecontext(&f.ctx, entry, 0);
		f.st = kReady;
		f.started = false;
		f.tid = uint3{i % blockDim_.x, (i / blockDim_.x) % blockDim_.y, i / (blockDim_.x * blockDim_.y)};
	}
	for (;;) {
		for (int k = 0; k < n; k++) {
			int i = reverse ? n - 1 - k : k;
			if (fibers[i].st != kReady) continue;
			cur = i;
			threadIdx_ = fibers[i].tid;
			resume(i);
			cur = -1;
		}
		int done = 0, bar = 0, wop = 0;
		for (int i = 0; i < n; i++) {
			done += fibers[i].st == kDone;
			bar += fibers[i].st == kBarrier;
			wop += fibers[i].st == kWarp;
		}
		if (done == n) return;
		if (wop > 0) {
			bool any = false;
			for (int w = 0; w * 32 < n; w++) any |= resolveWarp(w, n);
			if (!any) fail("internal: warp operations pending but none can complete");
			continue;
		}
		const Fiber *first = nullptr;
		for (int i = 0; i < n; i++) {
			const Fiber &f = fibers[i];
			if (f.st != kBarrier) continue;
			if (first == nullptr) first = &f;
			else if (f.file != first->file || f.line != first->line)
				fail("divergence: threads wait at different __syncthreads: %s:%d and %s:%d (thread %d)", first->file, first->line, f.file, f.line, i);
		}
		if (done > 0) {
			int exited = -1;
			for (int i = 0; i < n && exited < 0; i++)
				if (fibers[i].st == kDone) exited = i;
			fail("barrier divergence: %d of %d threads (thread %d first) have exited while %d wait at __syncthreads (%s:%d)", done, n, exited, bar, first->file, first->line);
		}
		for (int i = 0; i < n; i++) fibers[i].st = kReady;
	}
}

// Buffers: each argument buffer ends at a page boundary followed by an inaccessible page, and
// read-only ones are write-protected, so an access past the end or a write to an input faults.
struct Buf {
	char *base = nullptr, *p = nullptr;
	size_t n = 0, data = 0; // bytes asked for, bytes before the guard page
	std::string mode, path;
	int arg = 0;
};
std::vector<Buf> bufs;

void allocBuf(Buf &b) {
	size_t r = (b.n + 3) & ~size_t(3);
	b.data = (r + kPage - 1) / kPage * kPage;
	if (b.data == 0) b.data = kPage;
	void *m = mmap(nullptr, b.data + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) fail("out of memory for a %zu-byte buffer", b.n);
	b.base = (char *)m;
	mprotect(b.base + b.data, kPage, PROT_NONE);
	b.p = b.base + b.data - r;
}

void onFault(int sig, siginfo_t *si, void *) {
	char *a = (char *)si->si_addr;
	const char *what = "outside every buffer (a wild pointer)";
	char msg[256];
	for (const Buf &b : bufs) {
		if (a >= b.base + b.data && a < b.base + b.data + kPage) {
			snprintf(msg, sizeof msg, "%ld bytes past the end of argument %d (%zu bytes)", (long)(a - (b.p + b.n)), b.arg, b.n);
			what = msg;
		} else if (a >= b.base && a < b.base + b.data) {
			if (a < b.p) snprintf(msg, sizeof msg, "%ld bytes before the start of argument %d", (long)(b.p - a), b.arg);
			else snprintf(msg, sizeof msg, "a write to argument %d at byte %ld, a read-only input", b.arg, (long)(a - b.p));
			what = msg;
		}
	}
	for (const Fiber &f : fibers)
		if (f.stack != nullptr && a >= f.stack && a < f.stack + kPage) what = "the guard page of a thread stack (stack overflow)";
	fprintf(stderr, "emu: %s", kernelName);
	if (inBlock) fprintf(stderr, " block (%u,%u,%u)", blockIdx_.x, blockIdx_.y, blockIdx_.z);
	if (cur >= 0) fprintf(stderr, " thread (%u,%u,%u)", threadIdx_.x, threadIdx_.y, threadIdx_.z);
	fprintf(stderr, ": memory fault (signal %d) at %p: %s\n", sig, (void *)a, what);
	_exit(3);
}

bool readFile(const std::string &path, char *dst, size_t n) {
	FILE *f = fopen(path.c_str(), "rb");
	if (f == nullptr) return false;
	size_t got = fread(dst, 1, n, f);
	char extra;
	bool ok = got == n && fread(&extra, 1, 1, f) == 0;
	fclose(f);
	return ok;
}

} // namespace
} // namespace emu

int main(int argc, char **argv) {
	using namespace emu;
	if (argc == 2 && strcmp(argv[1], "list") == 0) {
		for (const Entry *e = kernels; e->name != nullptr; e++) printf("%s\n", e->name);
		return 0;
	}
	static char altstack[1 << 16];
	stack_t ss{};
	ss.ss_sp = altstack;
	ss.ss_size = sizeof altstack;
	sigaltstack(&ss, nullptr);
	struct sigaction sa{};
	sa.sa_sigaction = onFault;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGSEGV, &sa, nullptr);
	sigaction(SIGBUS, &sa, nullptr);

	std::string kernel;
	dim3 grid, block;
	long shmem = 0;
	bool reverse = false;
	std::vector<Arg> args;
	std::vector<std::pair<int, int>> aliases; // (argument, the argument whose buffer it passes)
	char line[4096];
	while (fgets(line, sizeof line, stdin) != nullptr) {
		char w[64] = "", s1[64] = "", s2[4000] = "";
		unsigned long long n = 0;
		if (sscanf(line, "%63s", w) != 1) continue;
		std::string word = w;
		if (word == "kernel" && sscanf(line, "%*s %63s", s1) == 1) {
			kernel = s1;
		} else if (word == "grid" && sscanf(line, "%*s %u %u %u", &grid.x, &grid.y, &grid.z) == 3) {
		} else if (word == "block" && sscanf(line, "%*s %u %u %u", &block.x, &block.y, &block.z) == 3) {
		} else if (word == "shared" && sscanf(line, "%*s %ld", &shmem) == 1) {
		} else if (word == "order" && sscanf(line, "%*s %63s", s1) == 1) {
			reverse = strcmp(s1, "reverse") == 0;
		} else if (word == "ptr" && sscanf(line, "%*s %63s %3999s %llu", s1, s2, &n) == 3) {
			Buf b;
			b.mode = s1;
			b.path = s2;
			b.n = n;
			b.arg = (int)args.size();
			allocBuf(b);
			if (b.mode == "in" || b.mode == "inout") {
				if (!readFile(b.path, b.p, b.n)) fail("argument %d: cannot read %zu bytes from %s", b.arg, b.n, b.path.c_str());
				if (b.mode == "in") mprotect(b.base, b.data, PROT_READ);
			} else if (b.mode == "out") {
				memset(b.p, 0xff, b.n); // NaN everywhere: an element the kernel does not write stays NaN
			} else {
				fail("argument %d: unknown buffer mode %s", b.arg, s1);
			}
			bufs.push_back(b);
			args.push_back(Arg{Arg::kPtr, b.p, 0, 0});
		} else if (word == "alias" && sscanf(line, "%*s %llu", &n) == 1) {
			// the buffer of another argument (an op whose output may be its input), resolved below
			aliases.push_back({(int)args.size(), (int)n});
			args.push_back(Arg{Arg::kPtr, nullptr, 0, 0});
		} else if (word == "null") {
			args.push_back(Arg{Arg::kPtr, nullptr, 0, 0});
		} else if (word == "i32" && sscanf(line, "%*s %63s", s1) == 1) {
			args.push_back(Arg{Arg::kI32, nullptr, (int64_t)(int32_t)strtol(s1, nullptr, 10), 0});
		} else if (word == "i64" && sscanf(line, "%*s %63s", s1) == 1) {
			args.push_back(Arg{Arg::kI64, nullptr, (int64_t)strtoll(s1, nullptr, 10), 0});
		} else if (word == "f32" && sscanf(line, "%*s %63s", s1) == 1) {
			uint32_t bits = (uint32_t)strtoul(s1, nullptr, 16);
			float f;
			memcpy(&f, &bits, 4);
			args.push_back(Arg{Arg::kF32, nullptr, 0, f});
		} else {
			fail("bad launch line: %s", line);
		}
	}
	for (auto [a, k] : aliases) {
		const Buf *src = nullptr;
		for (const Buf &b : bufs)
			if (b.arg == k) src = &b;
		if (src == nullptr) fail("argument %d: alias of argument %d, which is not a buffer", a, k);
		if (src->mode == "in") fail("argument %d: alias of the read-only argument %d", a, k);
		args[a].ptr = src->p;
	}
	const Entry *e = kernels;
	while (e->name != nullptr && kernel != e->name) e++;
	if (e->name == nullptr) fail("no kernel %s in the registry", kernel.c_str());
	kernelName = e->name;
	long threads = (long)block.x * block.y * block.z;
	if (threads < 1 || threads > 1024) fail("block of %ld threads (the GPU allows 1 to 1024)", threads);
	if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) fail("bad grid (%u,%u,%u)", grid.x, grid.y, grid.z);
	if (shmem != 0) fail("dynamic shared memory (%ld bytes) is not emulated", shmem);
	body = e->bind(args);
	fibers.resize(threads);
	gridDim_ = grid;
	blockDim_ = block;
	long blocks = (long)grid.x * grid.y * grid.z;
	inBlock = true;
	for (long k = 0; k < blocks; k++) {
		long b = reverse ? blocks - 1 - k : k;
		blockIdx_ = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / ((long)grid.x * grid.y))};
		runBlock((int)threads, reverse);
	}
	inBlock = false;
	for (const Buf &b : bufs) {
		if (b.mode == "in") continue;
		FILE *f = fopen(b.path.c_str(), "wb");
		if (f == nullptr || fwrite(b.p, 1, b.n, f) != b.n || fclose(f) != 0) fail("cannot write %s", b.path.c_str());
	}
	return 0;
}
