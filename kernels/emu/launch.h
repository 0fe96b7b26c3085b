// launch.h: the kernel registry of the emulator. Each entry unpacks the launch's arguments into
// the kernel's own parameter types (deduced from its declaration), refusing a launch whose
// arguments do not match the signature (a mismatch cuLaunchKernel would not notice).
#pragma once

#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace emu {

// Arg is one launch argument as the launch description gives it.
struct Arg {
	enum Kind { kPtr, kI32, kI64, kF32 } kind;
	void *ptr;   // kPtr (nullptr for a NULL argument)
	int64_t i;   // kI32, kI64
	float f;     // kF32
};

[[noreturn]] void fail(const char *fmt, ...);

template <class T> struct conv;
template <class T> struct conv<T *> {
	static T *get(const Arg &a, int n) {
		if (a.kind != Arg::kPtr) fail("argument %d: the kernel takes a pointer", n);
		return (T *)a.ptr;
	}
};
template <> struct conv<int> {
	static int get(const Arg &a, int n) {
		if (a.kind != Arg::kI32) fail("argument %d: the kernel takes an int (int32)", n);
		return (int)a.i;
	}
};
template <> struct conv<unsigned> {
	static unsigned get(const Arg &a, int n) {
		if (a.kind != Arg::kI32) fail("argument %d: the kernel takes an unsigned (uint32)", n);
		return (unsigned)a.i;
	}
};
template <> struct conv<long> {
	static long get(const Arg &a, int n) {
		if (a.kind != Arg::kI64) fail("argument %d: the kernel takes a long (int64)", n);
		return (long)a.i;
	}
};
template <> struct conv<float> {
	static float get(const Arg &a, int n) {
		if (a.kind != Arg::kF32) fail("argument %d: the kernel takes a float", n);
		return a.f;
	}
};

// Body runs the kernel for the current thread.
using Body = std::function<void()>;
using Binder = Body (*)(const std::vector<Arg> &);

template <class... A, size_t... I> Body bindArgs(void (*fn)(A...), const std::vector<Arg> &args, std::index_sequence<I...>) {
	if (args.size() != sizeof...(A)) fail("%d arguments given, the kernel takes %d", (int)args.size(), (int)sizeof...(A));
	std::tuple<A...> vals{conv<A>::get(args[I], (int)I)...};
	return [fn, vals]() { fn(std::get<I>(vals)...); };
}

template <auto Fn> struct binder;
template <class... A, void (*Fn)(A...)> struct binder<Fn> {
	static Body make(const std::vector<Arg> &args) { return ::emu::bindArgs(Fn, args, std::index_sequence_for<A...>{}); }
};

struct Entry {
	const char *name;
	Binder bind;
};

// The registry (written by the test driver from kernels.Modules), ending with {nullptr, nullptr}.
extern const Entry kernels[];

} // namespace emu

#define EMU_KERNEL(name) {#name, &::emu::binder<&name>::make}
