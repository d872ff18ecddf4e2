// A small C API over libtorch's own collectives (c10d: TCPStore, ProcessGroupGloo and, where
// libtorch has CUDA, ProcessGroupNCCL), ATen's autocast state and page-locked host memory; its
// Rust bindings are src/sys. Every entry point catches all C++ exceptions: an error comes back as a malloc'd
// string (free it with gc_free_str), never as an exception across the FFI.
// Tensors are tch's `C_tensor` pointers, which point at an `at::Tensor` (torch-sys's torch_api.h).

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GROUPCAM_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Runs `f`, turning any exception into an error string (nullptr on success).
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensors_of(void* const* ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*static_cast<at::Tensor*>(ts[i]));
  return out;
}

// Gloo's TCP devices: one per interface in GLOO_SOCKET_IFNAME (as torch.distributed reads
// it), else the address this host's name resolves to, falling back to loopback.
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> out;
  if (const char* ifs = std::getenv("GLOO_SOCKET_IFNAME"); ifs != nullptr && *ifs != '\0') {
    std::stringstream ss(ifs);
    for (std::string name; std::getline(ss, name, ',');) {
      if (!name.empty()) out.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
  }
  if (out.empty()) out.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return out;
}

}  // namespace

struct gc_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

extern "C" {

void gc_free_str(char* s) { std::free(s); }

int gc_has_nccl() {
#ifdef GROUPCAM_NCCL
  return 1;
#else
  return 0;
#endif
}

// Rank 0 hosts the TCPStore on `port` and waits for `world` ranks (unless `agent_store`: then
// a launcher such as torchrun hosts it and every rank is a client, as torch.distributed does
// under TORCHELASTIC_USE_AGENT_STORE); the others connect to host:port, retrying until
// `timeout_ms`. `cuda` selects NCCL (else Gloo on CPU).
char* gc_pg_new(const char* host, int port, int rank, int world, int64_t timeout_ms, int cuda, int agent_store,
                gc_pg** out) {
  *out = nullptr;
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0 && agent_store == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    c10::intrusive_ptr<c10d::Backend> backend;
    if (cuda != 0) {
#ifdef GROUPCAM_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
      throw std::runtime_error("this build of groupcam has no NCCL (libtorch without CUDA or no nccl.h)");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices = gloo_devices();
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    }
    *out = new gc_pg{store, backend, timeout};
  });
}

void gc_pg_free(gc_pg* pg) {
  try {
    delete pg;
  } catch (...) {
  }
}

// In-place sum of each tensor over the ranks; all are launched, then all waited for.
char* gc_pg_allreduce_sum(gc_pg* pg, void* const* ts, size_t n) {
  return guarded([&] {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors_of(ts, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(pg->backend->allreduce(one));
    }
    for (auto& w : works) w->wait(pg->timeout);
  });
}

char* gc_pg_broadcast(gc_pg* pg, void* const* ts, size_t n, int root) {
  return guarded([&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors_of(ts, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(pg->backend->broadcast(one, o));
    }
    for (auto& w : works) w->wait(pg->timeout);
  });
}

char* gc_pg_barrier(gc_pg* pg) {
  return guarded([&] { pg->backend->barrier()->wait(pg->timeout); });
}

// The store's counter `key` plus `delta` (delta 0 reads it; a missing key counts from 0).
char* gc_store_add(gc_pg* pg, const char* key, int64_t delta, int64_t* value) {
  return guarded([&] { *value = pg->store->add(std::string(key), delta); });
}

// ---- autocast (CUDA's state; setting it needs no GPU) ----------------------------------

// dtype: 0 = float16, 1 = bfloat16. Saves the previous state for gc_autocast_exit.
void gc_autocast_enter(int dtype, int* prev_enabled, int* prev_dtype) {
  *prev_enabled = at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0;
  *prev_dtype = at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, dtype == 1 ? at::kBFloat16 : at::kHalf);
  at::autocast::increment_nesting();
}

// Restores the state saved by the matching enter; the outermost exit drops the cast cache.
void gc_autocast_exit(int prev_enabled, int prev_dtype) {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled != 0);
  at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype == 1 ? at::kBFloat16 : at::kHalf);
}

// Turns CUDA autocast on or off, leaving its dtype and nesting as they are (for a region that
// must run in full precision inside an autocast one).
void gc_autocast_set_enabled(int enabled) { at::autocast::set_autocast_enabled(at::kCUDA, enabled != 0); }

// -1 when off, else the dtype code of gc_autocast_enter.
int gc_autocast_state() {
  if (!at::autocast::is_autocast_enabled(at::kCUDA)) return -1;
  return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
}

// ---- page-locked host memory -------------------------------------------------------------

// An uninitialised uint8 CPU tensor in page-locked memory, for non-blocking copies to a GPU
// (tch cannot ask for pinned allocation; pinning a finished tensor would copy it once more).
// Needs a CUDA device.
char* gc_empty_pinned_u8(const int64_t* sizes, size_t n, void** out) {
  return guarded([&] {
    auto t = at::empty(at::IntArrayRef(sizes, n), at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    *out = new at::Tensor(std::move(t));
  });
}

}  // extern "C"
