// Portable (manylinux) builds only: CMakeLists.txt compiles this file and links
// with -Wl,--wrap=NAME for each NAME in FUSEDOPT_GLIBC_WRAPPED, so that every
// reference to NAME, ours and those of the static libstdc++, lands on
// __wrap_NAME here instead of on the newest glibc version of NAME. Each
// wrapper either calls the oldest x86-64 version of the same function, which
// glibc keeps for old programs, or stands in for a symbol that older glibcs
// lack. docs/wheel.md says which symbol set which floor.
#include <dlfcn.h>
#include <pthread.h>

#if !defined(__GLIBC__) || !defined(__x86_64__)
#error "glibc_compat.cpp pins x86-64 glibc symbol versions: build without FUSEDOPT_PORTABLE here"
#endif

// The oldest version of `name` under the local name `local`.
#define FUSEDOPT_OLD_VERSION(local, name, version) __asm__(".symver " #local ", " #name "@" #version)

extern "C" {

// glibc 2.34 moved libdl and libpthread into libc and gave the moved functions
// a new version; the GLIBC_2.2.5 symbols are the same functions (before 2.34
// they live in libdl.so.2 and libpthread.so.0, which the portable link adds).
FUSEDOPT_OLD_VERSION(fusedopt_old_dladdr, dladdr, GLIBC_2.2.5);
FUSEDOPT_OLD_VERSION(fusedopt_old_pthread_once, pthread_once, GLIBC_2.2.5);
FUSEDOPT_OLD_VERSION(fusedopt_old_pthread_key_create, __pthread_key_create, GLIBC_2.2.5);
int fusedopt_old_dladdr(const void* address, Dl_info* info);
int fusedopt_old_pthread_once(pthread_once_t* once, void (*routine)());
int fusedopt_old_pthread_key_create(pthread_key_t* key, void (*destructor)(void*));

int __wrap_dladdr(const void* address, Dl_info* info) { return fusedopt_old_dladdr(address, info); }
int __wrap_pthread_once(pthread_once_t* once, void (*routine)()) {
  return fusedopt_old_pthread_once(once, routine);
}
// libstdc++ takes this one's address to ask whether threads may exist (a
// weak reference): defined here, the answer is always yes, which is safe.
int __wrap___pthread_key_create(pthread_key_t* key, void (*destructor)(void*)) {
  return fusedopt_old_pthread_key_create(key, destructor);
}

// glibc 2.29 dropped the SVID error-handling wrapper from pow and versioned the
// result GLIBC_2.29; the GLIBC_2.2.5 pow runs the same code behind that
// wrapper, which in the default (POSIX) mode returns the same value and sets
// errno the same way. It is also the pow numpy's manylinux wheels call, so the
// bias corrections stay bitwise equal to the reference's.
FUSEDOPT_OLD_VERSION(fusedopt_old_pow, pow, GLIBC_2.2.5);
double fusedopt_old_pow(double x, double y);
double __wrap_pow(double x, double y) { return fusedopt_old_pow(x, y); }

// glibc 2.32 added this flag so libstdc++ can skip atomic reference counting
// while a process has one thread. Before 2.32 there is no flag: always saying
// "not single-threaded" keeps every count atomic, which is correct everywhere.
char __wrap___libc_single_threaded = 0;

}  // extern "C"
