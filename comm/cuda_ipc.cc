// CUDA IPC sharing of device buffers (comm/cuda_ipc.h).
#include "comm/cuda_ipc.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"

#ifdef GRPO_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace grpo::comm {
namespace {

// Serialized handle: fixed layout, native endianness (both ends are on one machine).
struct WireHandle {
  uint64_t magic;
  uint64_t pid;
  uint64_t ptr;  // the owner's device pointer (used as is in the same process)
  uint64_t bytes;
  int32_t device;
  int32_t reserved;
  char ipc[64];  // cudaIpcMemHandle_t
};
constexpr uint64_t kMagic = 0x3143504941445543ull;  // "CUDAIPC1"

}  // namespace

IpcBuffer::IpcBuffer(IpcBuffer&& o) noexcept { *this = std::move(o); }

IpcBuffer& IpcBuffer::operator=(IpcBuffer&& o) noexcept {
  if (this != &o) {
    Close();
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    same_process_ = o.same_process_;
    opened_ = o.opened_;
    device_ = o.device_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
    o.opened_ = false;
  }
  return *this;
}

IpcBuffer::~IpcBuffer() { Close(); }

std::string MachineId() {
  static const std::string kId = [] {  // fixed for the life of the process
    std::string id;
    if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
      char buf[128] = {};
      if (std::fgets(buf, sizeof(buf), f) != nullptr) id = buf;
      std::fclose(f);
    }
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
    if (!id.empty()) return "boot:" + id;
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) == 0) return std::string("host:") + host;
    return std::string("unknown");
  }();
  return kId;
}

#ifndef GRPO_HAVE_CUDA

bool CudaIpcAvailable() { return false; }
absl::StatusOr<std::string> ExportDeviceBuffer(const void*, size_t) {
  return absl::UnavailableError("CUDA IPC: this build has no CUDA");
}
absl::StatusOr<IpcBuffer> IpcBuffer::Import(const std::string&, int) {
  return absl::UnavailableError("CUDA IPC: this build has no CUDA");
}
void IpcBuffer::Close() {}
absl::Status CopyDeviceToDevice(void*, const void*, size_t) {
  return absl::UnavailableError("CUDA IPC: this build has no CUDA");
}
absl::Status UseCudaDevice(int) { return absl::UnavailableError("this build has no CUDA"); }

#else

bool CudaIpcAvailable() { return true; }

absl::StatusOr<std::string> ExportDeviceBuffer(const void* device_ptr, size_t bytes) {
  cudaPointerAttributes attr;
  cudaError_t e = cudaPointerGetAttributes(&attr, device_ptr);
  if (e != cudaSuccess || attr.type != cudaMemoryTypeDevice) {
    cudaGetLastError();
    return absl::InvalidArgumentError(
        "CUDA IPC export: the pointer is not device memory from cudaMalloc");
  }
  WireHandle w{};
  w.magic = kMagic;
  w.pid = static_cast<uint64_t>(getpid());
  w.ptr = reinterpret_cast<uint64_t>(device_ptr);
  w.bytes = bytes;
  w.device = attr.device;
  cudaIpcMemHandle_t h;
  static_assert(sizeof(h) == sizeof(w.ipc), "cudaIpcMemHandle_t size changed");
  // The handle names the whole allocation and the importer maps its start: so the pointer must
  // be what cudaMalloc returned (the header's contract).
  e = cudaIpcGetMemHandle(&h, const_cast<void*>(device_ptr));
  if (e != cudaSuccess) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cudaIpcGetMemHandle: %s", cudaGetErrorString(e)));
  }
  std::memcpy(w.ipc, &h, sizeof(h));
  return std::string(reinterpret_cast<const char*>(&w), sizeof(w));
}

absl::StatusOr<IpcBuffer> IpcBuffer::Import(const std::string& handle, int device) {
  WireHandle w;
  if (handle.size() != sizeof(w)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CUDA IPC import: a handle has %d bytes, got %d", sizeof(w), handle.size()));
  }
  std::memcpy(&w, handle.data(), sizeof(w));
  if (w.magic != kMagic) {
    return absl::InvalidArgumentError("CUDA IPC import: not a handle made by ExportDeviceBuffer");
  }
  IpcBuffer b;
  b.bytes_ = static_cast<size_t>(w.bytes);
  b.device_ = device >= 0 ? device : w.device;
  if (w.pid == static_cast<uint64_t>(getpid())) {
    // cudaIpcOpenMemHandle refuses handles of its own process; the pointer is valid here as is.
    b.ptr_ = reinterpret_cast<void*>(w.ptr);
    b.same_process_ = true;
    return b;
  }
  cudaIpcMemHandle_t h;
  std::memcpy(&h, w.ipc, sizeof(h));
  cudaError_t e = cudaSetDevice(b.device_);
  if (e == cudaSuccess) e = cudaIpcOpenMemHandle(&b.ptr_, h, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    cudaGetLastError();
    b.ptr_ = nullptr;
    return absl::UnavailableError(
        absl::StrFormat("cudaIpcOpenMemHandle (device %d, owner pid %d): %s", b.device_, w.pid,
                        cudaGetErrorString(e)));
  }
  b.opened_ = true;
  return b;
}

void IpcBuffer::Close() {
  if (opened_ && ptr_ != nullptr) {
    cudaSetDevice(device_);
    cudaIpcCloseMemHandle(ptr_);
  }
  ptr_ = nullptr;
  opened_ = false;
}

absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
  if (e != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("cudaMemcpy device to device: %s", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

absl::Status UseCudaDevice(int device) {
  const cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrFormat("cudaSetDevice(%d): %s", device, cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

#endif  // GRPO_HAVE_CUDA

}  // namespace grpo::comm
