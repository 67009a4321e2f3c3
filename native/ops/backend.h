// One interface for all compute backends. The model calls only this; each
// backend implements every op of op_list.h (a missing one leaves the backend
// abstract and fails to compile) and answers supports(op, dtype) so callers
// can fall back instead of crashing.
#pragma once
#include <cstddef>

#include "op_args.h"
#include "op_list.h"

namespace rlhf {

enum class DType { F32, BF16, F16 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual bool supports(Op op, DType dtype) const = 0;
  virtual int threads() const = 0;

#define RLHF_OP_VIRTUAL(name, Args, family) virtual void name(const Args& args) = 0;
  RLHF_OPS(RLHF_OP_VIRTUAL)
#undef RLHF_OP_VIRTUAL
};

}  // namespace rlhf
