// Communicators between threads of one process (comm/communicator.h): host buffers, a fixed
// reduction order (rank 0 + rank 1 + ... for every element), deadlines and abort as the contract
// says. For tests of everything built on collectives, and for several workers in one CPU process.
//
//   auto group = comm::LocalGroup::Create(2);
//   std::thread t([&] { auto c = group->Rank(1); c->AllReduceSum(...); });
//   auto c0 = group->Rank(0); c0->AllReduceSum(...);
//
// A group is one communicator: once aborted (a timeout, a mismatched call, Abort()) it stays
// aborted; build a new group to go on.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace grpo::comm {

class LocalGroup {
 public:
  // world_size >= 1.
  static std::shared_ptr<LocalGroup> Create(int world_size);
  // The communicator of `rank` (0 <= rank < world_size); it keeps the group alive. Ask for each
  // rank once.
  virtual std::unique_ptr<Communicator> Rank(int rank) = 0;
  virtual ~LocalGroup() = default;
};

}  // namespace grpo::comm
