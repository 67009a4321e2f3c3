#include "guarded_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "../engine.h"
#include "../error.h"

namespace rlhf::cpu {

namespace {
size_t page_round(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ((bytes ? bytes : 1) + page - 1) / page * page;
}
}  // namespace

GuardedBackend::Open::Open(GuardedBackend& g_) : g(g_), lock(g_.mu_) { g.protect_all(PROT_READ | PROT_WRITE); }
GuardedBackend::Open::~Open() {
  for (const auto& [p, len] : g.maps_) mprotect(p, len, PROT_NONE);  // cannot fail on our own mappings; never throws here
}

void GuardedBackend::protect_all(int prot) {
  for (const auto& [p, len] : maps_)
    if (mprotect(p, len, prot) != 0) throw Error(code::kInternal, std::string("cpu-guarded: mprotect failed: ") + std::strerror(errno));
}

GuardedBackend::~GuardedBackend() {
  for (const auto& [p, len] : maps_) munmap(p, len);
}

void* GuardedBackend::alloc(size_t bytes) {
  const size_t len = page_round(bytes);
  void* p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);  // anonymous pages read as zero
  if (p == MAP_FAILED) throw Error(code::kResource, std::string(kOutOfMemory) + " (" + std::to_string(bytes) + " bytes)");
  std::lock_guard<std::mutex> lock(mu_);
  maps_[p] = len;
  return p;
}

void GuardedBackend::release(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = maps_.find(p);
  if (it == maps_.end()) return;
  munmap(it->first, it->second);
  maps_.erase(it);
}

void GuardedBackend::upload(void* dst, const void* host_src, size_t bytes) {
  Open open(*this);
  cpu_.upload(dst, host_src, bytes);
}
void GuardedBackend::download(void* host_dst, const void* src, size_t bytes) {
  Open open(*this);
  cpu_.download(host_dst, src, bytes);
}
void GuardedBackend::copy(void* dst, const void* src, size_t bytes) {
  Open open(*this);
  cpu_.copy(dst, src, bytes);
}
void GuardedBackend::copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) {
  Open open(*this);
  cpu_.copy2d(dst, dpitch, src, spitch, width, height);
}
void GuardedBackend::fill_zero(void* dst, size_t bytes) {
  Open open(*this);
  cpu_.fill_zero(dst, bytes);
}

int64_t GuardedBackend::live_allocations() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(maps_.size());
}

GuardedBackend& guarded_backend() {
  static GuardedBackend* g = new GuardedBackend(default_engine().cpu);  // never destroyed, as the engine
  return *g;
}

}  // namespace rlhf::cpu
