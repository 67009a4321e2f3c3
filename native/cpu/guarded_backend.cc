#include "guarded_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <string>

#include "../engine.h"
#include "../error.h"

namespace rlhf::cpu {

namespace {
size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
size_t page_round(size_t bytes) {
  const size_t page = page_size();
  return ((bytes ? bytes : 1) + page - 1) / page * page;
}
}  // namespace

GuardedBackend::Open::Open(GuardedBackend& g_) : g(g_), lock(g_.mu_) { g.protect_all(PROT_READ | PROT_WRITE); }
GuardedBackend::Open::~Open() {
  if (g.arena_) mprotect(g.arena_, g.arena_bytes_, PROT_NONE);  // cannot fail on our own mapping; never throws here
}

void GuardedBackend::protect_all(int prot) {
  if (arena_ && mprotect(arena_, arena_bytes_, prot) != 0)
    throw Error(code::kInternal, std::string("cpu-guarded: mprotect failed: ") + std::strerror(errno));
}

void GuardedBackend::reserve() {
  if (arena_) return;
  // Address space only (MAP_NORESERVE: no commit charge, pages appear on first
  // write): half the machine's memory, at most 16 GiB.
  const size_t phys = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * page_size();
  arena_bytes_ = page_round(std::min<size_t>(phys / 2, size_t(16) << 30));
  void* p = mmap(nullptr, arena_bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error(code::kResource, std::string("cpu-guarded: cannot reserve the arena: ") + std::strerror(errno));
  arena_ = static_cast<char*>(p);
  free_[0] = arena_bytes_;
}

GuardedBackend::~GuardedBackend() {
  if (arena_) munmap(arena_, arena_bytes_);
}

void* GuardedBackend::alloc(size_t bytes) {
  const size_t len = page_round(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  reserve();
  for (auto it = free_.begin(); it != free_.end(); ++it) {  // first fit
    if (it->second < len) continue;
    const size_t off = it->first, rest = it->second - len;
    free_.erase(it);
    if (rest) free_[off + len] = rest;
    used_[off] = len;
    return arena_ + off;  // never written since mapped or released: reads as zero
  }
  throw Error(code::kResource, std::string(kOutOfMemory) + " (cpu-guarded arena of " + std::to_string(arena_bytes_ >> 20) +
                                   " MiB is full; " + std::to_string(bytes) + " bytes asked)");
}

void GuardedBackend::release(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = used_.find(static_cast<size_t>(static_cast<char*>(p) - arena_));
  if (it == used_.end()) return;
  size_t off = it->first, len = it->second;
  used_.erase(it);
  madvise(arena_ + off, len, MADV_DONTNEED);  // gives the pages back; they read as zero when reused
  auto next = free_.lower_bound(off);
  if (next != free_.end() && off + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      prev->second += len;
      return;
    }
  }
  free_[off] = len;
}

void GuardedBackend::upload(void* dst, const void* host_src, size_t bytes) {
  Open open(*this);
  cpu_.upload(dst, host_src, bytes);
  uploads_ += 1;
  upload_bytes_ += static_cast<int64_t>(bytes);
}
void GuardedBackend::download(void* host_dst, const void* src, size_t bytes) {
  Open open(*this);
  cpu_.download(host_dst, src, bytes);
  downloads_ += 1;
  download_bytes_ += static_cast<int64_t>(bytes);
}
bool GuardedBackend::transfer_counts(TransferCounts* out) const {
  out->uploads = uploads_, out->upload_bytes = upload_bytes_, out->downloads = downloads_, out->download_bytes = download_bytes_;
  return true;
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
  return static_cast<int64_t>(used_.size());
}

GuardedBackend& guarded_backend() {
  static GuardedBackend* g = new GuardedBackend(default_engine().cpu);  // never destroyed, as the engine
  return *g;
}

}  // namespace rlhf::cpu
