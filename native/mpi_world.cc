#include "mpi_world.h"

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "error.h"

namespace rlhf::mpi {
namespace {

// OpenMPI's handles are pointers to its predefined objects; the functions
// below are declared with void* in their place (same ABI: one pointer).
using Handle = void*;
constexpr int kSuccess = 0;         // MPI_SUCCESS
constexpr int kThreadFunneled = 1;  // MPI_THREAD_FUNNELED in OpenMPI's mpi.h
constexpr int kMaxLibraryVersion = 256;  // >= OpenMPI's MPI_MAX_LIBRARY_VERSION_STRING

struct Api {
  int (*Init_thread)(int*, char***, int, int*);
  int (*Initialized)(int*);
  int (*Finalized)(int*);
  int (*Finalize)();
  int (*Comm_rank)(Handle, int*);
  int (*Comm_size)(Handle, int*);
  int (*Allreduce)(const void*, void*, int, Handle, Handle, Handle);
  int (*Bcast)(void*, int, Handle, int, Handle);
  int (*Barrier)(Handle);
  int (*Get_library_version)(char*, int*);
  Handle comm_world, in_place, t_float, t_double, t_byte, op_sum, op_max;
};

std::mutex mu;
Api api{};
WorldInfo info;

template <typename F>
void sym(void* lib, const char* name, F& out, const std::string& file) {
  void* p = dlsym(lib, name);
  if (!p)
    throw Error(code::kUnsupported, file + " has no symbol " + name +
                                        ": rlhf-native supports OpenMPI (libmpi.so.40) only; MPICH and its derivatives are not supported yet");
  out = reinterpret_cast<F>(p);
}

void check(int rc, const char* what) {
  if (rc != kSuccess) throw Error(code::kInternal, std::string("MPI_") + what + " failed with MPI error " + std::to_string(rc));
}

void require_init() {
  if (!info.initialized) throw Error(code::kArgument, "comm: MPI is not initialized (call commInit first)");
}

// MPI counts are int: long buffers go in chunks (elementwise collectives, so chunking changes nothing).
template <typename T, typename F>
void chunked(T* data, int64_t n, F&& f) {
  for (int64_t off = 0; off < n;) {
    const int64_t c = std::min<int64_t>(n - off, INT_MAX / 2);
    f(data + off, static_cast<int>(c));
    off += c;
  }
}

}  // namespace

WorldInfo init() {
  std::lock_guard<std::mutex> lock(mu);
  if (info.initialized) return info;
  std::vector<std::string> names;
  if (const char* p = std::getenv("RLHF_MPI_LIB"); p && *p) names.push_back(p);
  names.push_back("libmpi.so.40");
  names.push_back("libmpi.so");
  void* lib = nullptr;
  std::string file, errors;
  for (const std::string& n : names) {
    // RTLD_GLOBAL: OpenMPI dlopens its own components, which resolve libmpi's symbols globally.
    lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (lib) {
      file = n;
      break;
    }
    const char* e = dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (e ? e : n);
  }
  if (!lib)
    throw Error(code::kUnsupported, "the launcher started several processes but no MPI library could be loaded (" + errors +
                                        "); install OpenMPI (Debian: apt-get install openmpi-bin) or set RLHF_MPI_LIB to its libmpi.so");
  Api a{};
  // OpenMPI's predefined objects first: their absence is how another MPI is recognised.
  sym(lib, "ompi_mpi_comm_world", a.comm_world, file);
  sym(lib, "ompi_mpi_float", a.t_float, file);
  sym(lib, "ompi_mpi_double", a.t_double, file);
  sym(lib, "ompi_mpi_byte", a.t_byte, file);
  sym(lib, "ompi_mpi_op_sum", a.op_sum, file);
  sym(lib, "ompi_mpi_op_max", a.op_max, file);
  a.in_place = reinterpret_cast<Handle>(1);  // MPI_IN_PLACE is ((void *) 1) in OpenMPI's mpi.h
  sym(lib, "MPI_Init_thread", a.Init_thread, file);
  sym(lib, "MPI_Initialized", a.Initialized, file);
  sym(lib, "MPI_Finalized", a.Finalized, file);
  sym(lib, "MPI_Finalize", a.Finalize, file);
  sym(lib, "MPI_Comm_rank", a.Comm_rank, file);
  sym(lib, "MPI_Comm_size", a.Comm_size, file);
  sym(lib, "MPI_Allreduce", a.Allreduce, file);
  sym(lib, "MPI_Bcast", a.Bcast, file);
  sym(lib, "MPI_Barrier", a.Barrier, file);
  sym(lib, "MPI_Get_library_version", a.Get_library_version, file);
  int already = 0;
  check(a.Initialized(&already), "Initialized");
  if (!already) {
    // FUNNELED: the engine has worker threads, but only the main (JS) thread calls MPI.
    int provided = 0;
    check(a.Init_thread(nullptr, nullptr, kThreadFunneled, &provided), "Init_thread");
  }
  api = a;
  check(api.Comm_rank(api.comm_world, &info.rank), "Comm_rank");
  check(api.Comm_size(api.comm_world, &info.size), "Comm_size");
  char version[kMaxLibraryVersion * 16] = {0};
  int len = 0;
  if (api.Get_library_version(version, &len) == kSuccess) {
    std::string v(version, static_cast<size_t>(std::max(0, len)));
    info.version = v.substr(0, v.find(','));
  }
  info.library = file;
  info.initialized = true;
  return info;
}

WorldInfo world() {
  std::lock_guard<std::mutex> lock(mu);
  return info;
}

void finalize() {
  std::lock_guard<std::mutex> lock(mu);
  if (!info.initialized) return;
  int done = 0;
  api.Finalized(&done);
  if (!done) api.Finalize();
}

void all_reduce_sum(float* data, int64_t n) {
  require_init();
  chunked(data, n, [](float* p, int c) { check(api.Allreduce(api.in_place, p, c, api.t_float, api.op_sum, api.comm_world), "Allreduce"); });
}

void all_reduce_sum(double* data, int64_t n) {
  require_init();
  chunked(data, n, [](double* p, int c) { check(api.Allreduce(api.in_place, p, c, api.t_double, api.op_sum, api.comm_world), "Allreduce"); });
}

void all_reduce_max(double* data, int64_t n) {
  require_init();
  chunked(data, n, [](double* p, int c) { check(api.Allreduce(api.in_place, p, c, api.t_double, api.op_max, api.comm_world), "Allreduce"); });
}

void broadcast(void* data, int64_t bytes, int root) {
  require_init();
  if (root < 0 || root >= info.size) throw Error(code::kArgument, "comm broadcast: root " + std::to_string(root) + " is not a rank of a world of " + std::to_string(info.size));
  chunked(static_cast<char*>(data), bytes, [root](char* p, int c) { check(api.Bcast(p, c, api.t_byte, root, api.comm_world), "Bcast"); });
}

void barrier() {
  require_init();
  check(api.Barrier(api.comm_world), "Barrier");
}

}  // namespace rlhf::mpi
