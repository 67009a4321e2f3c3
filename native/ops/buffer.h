// An owned array in a backend's memory (host memory for the CPU backend,
// device memory for CUDA). The model keeps its slabs, activations and
// scratch in these, so it never assumes it can dereference what the ops
// compute on: data crosses to the host only through upload()/download().
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "backend.h"

namespace rlhf {

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { reset(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      swap(o);
    }
    return *this;
  }

  // At least n elements. Growing drops the old contents (new memory is
  // zero-filled); the callers write a buffer before they read it.
  T* ensure(Backend& be, int64_t n) {
    if (n > n_ || be_ != &be) {
      reset();
      be_ = &be;
      p_ = static_cast<T*>(be.alloc(sizeof(T) * static_cast<size_t>(n > 0 ? n : 1)));
      n_ = n;
    }
    return p_;
  }
  // n elements, all zero.
  T* zeros(Backend& be, int64_t n) {
    ensure(be, n);
    be.fill_zero(p_, sizeof(T) * static_cast<size_t>(n));
    return p_;
  }
  // n elements copied from the host.
  T* upload(Backend& be, const T* src, int64_t n) {
    ensure(be, n);
    be.upload(p_, src, sizeof(T) * static_cast<size_t>(n));
    return p_;
  }
  T* upload(Backend& be, const std::vector<T>& src) { return upload(be, src.data(), static_cast<int64_t>(src.size())); }
  // The first n elements (all by default) into host memory.
  std::vector<T> to_host(int64_t n = -1) const {
    std::vector<T> out(static_cast<size_t>(n < 0 ? n_ : n));
    if (!out.empty()) be_->download(out.data(), p_, sizeof(T) * out.size());
    return out;
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  Backend* backend() const { return be_; }
  void reset() {
    if (p_) be_->release(p_);
    p_ = nullptr;
    n_ = 0;
  }

 private:
  void swap(Buffer& o) noexcept {
    std::swap(be_, o.be_);
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
  }
  Backend* be_ = nullptr;
  T* p_ = nullptr;
  int64_t n_ = 0;
};

// dst (backend memory) <- src for n elements of T, and back.
template <typename T>
void upload_n(Backend& be, T* dst, const T* src, int64_t n) {
  if (n > 0) be.upload(dst, src, sizeof(T) * static_cast<size_t>(n));
}
template <typename T>
void download_n(Backend& be, T* dst, const T* src, int64_t n) {
  if (n > 0) be.download(dst, src, sizeof(T) * static_cast<size_t>(n));
}

}  // namespace rlhf
