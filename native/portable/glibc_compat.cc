// Part of the portable (prebuilt) binary only: CMakeLists.txt adds this file
// with RLHF_PORTABLE=ON and links with --wrap=NAME for each NAME in
// glibc_wraps.cmake, so every reference to NAME (ours, libstdc++'s, the CUDA
// runtime's) lands on __wrap_NAME below.
//
// Why: a binary linked against a recent glibc asks for the newest version of
// each symbol it uses (pthread_create@GLIBC_2.34, exp@GLIBC_2.29 ...) and then
// refuses to load on an older glibc, although the older versions of those
// functions still exist and do the same job. Each wrapper here calls the
// version every glibc since 2.2.5 exports, or, for the few functions that are
// new, does the same work with older calls. scripts/elf-needs.js and
// test/prebuild-install.test.ts check that nothing newer than glibc 2.28 is left.
#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

// (__GLIBC__ is only defined once a libc header is in.)
#if !(defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__))
#error "RLHF_PORTABLE is for x86-64 Linux with glibc (the symbol versions below are that ABI's)"
#endif

// __wrap_NAME jumps to NAME@VERSION. A jump, not a call through a prototype,
// so one line serves any signature, and arguments and results pass untouched.
#define RLHF_FORWARD(name, version)                                 \
  __asm__(".pushsection .text\n"                                    \
          ".symver rlhf_versioned_" #name ", " #name "@" version "\n" \
          ".globl __wrap_" #name "\n"                               \
          ".hidden __wrap_" #name "\n"                              \
          ".type __wrap_" #name ", @function\n"                     \
          "__wrap_" #name ":\n"                                     \
          "  jmp rlhf_versioned_" #name "@PLT\n"                    \
          ".size __wrap_" #name ", . - __wrap_" #name "\n"          \
          ".popsection\n");

// Moved from libpthread/libdl into libc in glibc 2.34, which gave them new
// versions; the 2.2.5 ones are the same functions.
RLHF_FORWARD(pthread_create, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_join, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_detach, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_once, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_key_create, "GLIBC_2.2.5")
RLHF_FORWARD(__pthread_key_create, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_key_delete, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_getspecific, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_setspecific, "GLIBC_2.2.5")
RLHF_FORWARD(dlopen, "GLIBC_2.2.5")
RLHF_FORWARD(dlsym, "GLIBC_2.2.5")
RLHF_FORWARD(dlclose, "GLIBC_2.2.5")
RLHF_FORWARD(dlerror, "GLIBC_2.2.5")
// The same move, for what the static CUDA runtime (cudart_static) calls:
// locks, semaphores and shared memory (librt's before 2.34), dl* lookups.
RLHF_FORWARD(dlvsym, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_condattr_setpshared, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_kill, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_mutex_trylock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_mutexattr_destroy, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_mutexattr_init, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_mutexattr_setpshared, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_mutexattr_settype, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_destroy, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_init, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_rdlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_timedrdlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_timedwrlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_tryrdlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_trywrlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_unlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlock_wrlock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlockattr_destroy, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlockattr_init, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_rwlockattr_setpshared, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_spin_destroy, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_spin_init, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_spin_lock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_spin_trylock, "GLIBC_2.2.5")
RLHF_FORWARD(pthread_spin_unlock, "GLIBC_2.2.5")
RLHF_FORWARD(sem_destroy, "GLIBC_2.2.5")
RLHF_FORWARD(sem_init, "GLIBC_2.2.5")
RLHF_FORWARD(sem_post, "GLIBC_2.2.5")
RLHF_FORWARD(sem_timedwait, "GLIBC_2.2.5")
RLHF_FORWARD(sem_trywait, "GLIBC_2.2.5")
RLHF_FORWARD(sem_wait, "GLIBC_2.2.5")
RLHF_FORWARD(shm_open, "GLIBC_2.2.5")
RLHF_FORWARD(shm_unlink, "GLIBC_2.2.5")
RLHF_FORWARD(dlmopen, "GLIBC_2.3.4")
// glibc 2.29 gave these new versions that no longer set errno (SVID error
// handling); the results are the same for the arguments this code passes.
RLHF_FORWARD(exp, "GLIBC_2.2.5")
RLHF_FORWARD(log, "GLIBC_2.2.5")
RLHF_FORWARD(pow, "GLIBC_2.2.5")

extern "C" {

// Before 2.33, fstat was an inline call of __fxstat (version 1 of struct stat).
int __fxstat(int ver, int fd, struct stat* buf);
__attribute__((visibility("hidden"))) int __wrap_fstat(int fd, struct stat* buf) { return __fxstat(1, fd, buf); }

// glibc 2.36's arc4random (std::random_device's source in libstdc++ built
// against it), from the kernel's generator like the original.
__attribute__((visibility("hidden"))) uint32_t __wrap_arc4random(void) {
  uint32_t v = 0;
  for (;;) {
    ssize_t n = getrandom(&v, sizeof v, 0);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno != EINTR) break;
  }
  // getrandom missing (kernel < 3.17): read the device instead.
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = read(fd, &v, sizeof v);
    close(fd);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
  }
  return v;
}

// glibc 2.32's flag that lets libstdc++ skip atomic reference counting while a
// process has one thread. 0 ("may have threads") is always correct; it only
// forgoes that shortcut.
__attribute__((visibility("hidden"))) char __wrap___libc_single_threaded = 0;

}  // extern "C"
