// Which SIMD instruction sets this CPU (and OS) supports, detected once at run
// time so one binary can pick AVX-512 / AVX2 / scalar kernels on any x86-64.
#pragma once
#include <string>

namespace rlhf::cpu {

struct Features {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool neon = false;  // aarch64
};

const Features& features();            // cached after first call
std::string simd_level();              // "avx512_bf16" | "avx512" | "avx2" | "neon" | "scalar"
int hardware_threads();                // logical CPUs usable by this process

}  // namespace rlhf::cpu
