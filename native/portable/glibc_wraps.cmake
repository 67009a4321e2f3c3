# glibc symbols the portable build redirects to native/portable/glibc_compat.cc
# (each NAME here is linked as --wrap=NAME, so every reference to NAME, in our
# objects and in the static libraries alike, goes to __wrap_NAME there). The
# list is what the CPU and CUDA builds were seen to need from a glibc newer
# than 2.28; scripts/prebuild.js refuses a binary that still needs more.
set(RLHF_GLIBC_WRAPS
  pthread_create
  pthread_join
  pthread_detach
  pthread_once
  pthread_key_create
  __pthread_key_create
  pthread_key_delete
  pthread_getspecific
  pthread_setspecific
  dlopen
  dlsym
  dlclose
  dlerror
  exp
  log
  pow
  fstat
  arc4random
  __libc_single_threaded
)
