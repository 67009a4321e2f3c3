// The MPI world, reached through an MPI library loaded at run time (dlopen),
// so one addon binary runs with or without MPI installed. Only OpenMPI's ABI
// is supported: its predefined handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM)
// are the addresses of exported objects (ompi_mpi_comm_world, ...), which
// dlsym finds; MPICH encodes them as integer constants compiled into the
// caller, so a library without those objects is refused. docs/distributed.md.
#pragma once
#include <cstdint>
#include <string>

namespace rlhf::mpi {

struct WorldInfo {
  bool initialized = false;
  int rank = 0;
  int size = 1;
  std::string library;  // the file dlopen loaded
  std::string version;  // MPI_Get_library_version
};

// Loads the library (path: $RLHF_MPI_LIB, else libmpi.so.40, else libmpi.so)
// and calls MPI_Init_thread once; later calls return the same world.
// E_UNSUPPORTED when no library loads or it is not OpenMPI.
WorldInfo init();
WorldInfo world();  // what init() found; {initialized: false} before it
void finalize();    // after the last collective; a no-op when not initialized

// Collectives on MPI_COMM_WORLD, in place. E_ARGUMENT before init().
void all_reduce_sum(float* data, int64_t n);
void all_reduce_sum(double* data, int64_t n);
void all_reduce_max(double* data, int64_t n);
void broadcast(void* data, int64_t bytes, int root);
void barrier();

}  // namespace rlhf::mpi
