// Sharing a device buffer between processes on one GPU (the learner and a rollout worker
// colocated on one device): the owner exports an opaque handle (bytes, sent over the control
// plane), the other process imports it and copies device to device into its own buffer. In the
// same process no handle needs opening: the import hands back the owner's pointer itself, so a
// colocated in-process worker can read the weights with no copy at all.
//
//   // owner (learner):       ASSIGN_OR_RETURN(std::string handle, ExportDeviceBuffer(ptr, bytes));
//   // receiver (any process): ASSIGN_OR_RETURN(IpcBuffer shared, IpcBuffer::Import(handle));
//   //                         RETURN_IF_ERROR(CopyDeviceToDevice(my_ptr, shared.data(), bytes));
//
// The owner must keep the buffer allocated (and its contents stable) while importers use it: the
// weight-sync protocol's versions and manifest say when. No CUDA types here; builds without CUDA
// get UNAVAILABLE from every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace grpo::comm {

// The handle of a device allocation: `device_ptr` must be what cudaMalloc returned (IPC maps
// whole allocations). It carries cudaIpcMemHandle_t (64 bytes), the
// exporting process id, the device, the pointer and the byte count, serialized (fixed size).
// INVALID_ARGUMENT for a pointer that is not device memory; UNAVAILABLE without CUDA.
absl::StatusOr<std::string> ExportDeviceBuffer(const void* device_ptr, size_t bytes);

// An imported buffer: opened with cudaIpcOpenMemHandle in another process (closed on
// destruction), or the owner's own pointer in the same process (nothing opened; no copy).
class IpcBuffer {
 public:
  // INVALID_ARGUMENT for a handle that is not one of ExportDeviceBuffer's (size, magic);
  // UNAVAILABLE when the driver refuses it (another GPU without peer access, the owner gone).
  // `device`: the GPU (this process's numbering) to map it on; -1 = the owner's device number,
  // right when both processes see the same GPUs.
  static absl::StatusOr<IpcBuffer> Import(const std::string& handle, int device = -1);
  IpcBuffer() = default;
  IpcBuffer(IpcBuffer&& other) noexcept;
  IpcBuffer& operator=(IpcBuffer&& other) noexcept;
  IpcBuffer(const IpcBuffer&) = delete;
  IpcBuffer& operator=(const IpcBuffer&) = delete;
  ~IpcBuffer();

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  // True when the buffer is the owner's memory in this very process (no handle was opened).
  bool same_process() const { return same_process_; }

 private:
  void Close();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool same_process_ = false;
  bool opened_ = false;
  int device_ = 0;
};

// Synchronous device-to-device copy (cudaMemcpy, any devices with peer access).
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes);

// True when this build has CUDA (the calls above can work where a GPU exists).
bool CudaIpcAvailable();

// This machine's identity for this boot (Linux: /proc/sys/kernel/random/boot_id, else the host
// name): a handle is only worth opening where MachineId() equals its exporter's.
std::string MachineId();

// cudaSetDevice for the calling thread: a thread that stages buffers for a device communicator
// must allocate them on the communicator's device. UNAVAILABLE without CUDA.
absl::Status UseCudaDevice(int device);

}  // namespace grpo::comm
