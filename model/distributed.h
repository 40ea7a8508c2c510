// Multi-rank execution on libtorch's c10d: one process per GPU (or per CPU
// worker in the tests), launched by
//   torchrun --standalone --nproc_per_node=N --no-python ./pgolf ...
// which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
// With WORLD_SIZE unset or 1 nothing here touches c10d: every collective is a
// no-op and the commands behave exactly as a single process.
//
// With WORLD_SIZE > 1, init_ranks joins the job: a TCPStore at MASTER_ADDR:
// MASTER_PORT (hosted by rank 0, or by torchrun's agent when it says so with
// TORCHELASTIC_USE_AGENT_STORE=True), then ProcessGroupGloo for CPU work or
// ProcessGroupNCCL on cuda:LOCAL_RANK for CUDA work. Collectives time out after
// PGOLF_DIST_TIMEOUT seconds (default 1800).
//
// Failure: a rank that fails calls abort_ranks (main does), which marks the job
// failed in the store and exits at once; every other rank polls that mark from
// a watcher thread (and notices a lost store) and exits non-zero within about a
// second, whatever it is doing -- no rank waits for a collective that will
// never come.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace at {
class Tensor;
}

namespace pgolf {

struct Ranks {
  int rank = 0, world = 1, local_rank = 0;
  bool multi() const { return world > 1; }
  bool root() const { return rank == 0; }
};

// The job's ranks as torchrun's environment describes them (no c10d). Throws
// pgolf::Error on malformed or inconsistent variables, or a world > 1 without
// MASTER_ADDR / MASTER_PORT.
Ranks ranks_from_env();

// Joins the job (once; later calls return the same ranks). cuda: the work runs
// on CUDA (NCCL, and the current device becomes cuda:LOCAL_RANK), else on the
// CPU (Gloo). A single rank returns at once.
const Ranks& init_ranks(bool cuda);
// The ranks joined so far (a single rank before init_ranks).
const Ranks& ranks();
// "rank R: " in a multi-rank job, "" otherwise (prefix of messages).
std::string rank_label();

// Collectives over all ranks; no-ops on a single rank. Every rank must make the
// same calls in the same order.
void all_reduce_sum(std::vector<double>& values);  // float64 sums, in place
// In place; each tensor is reduced on its own (one collective per bucket, all
// in flight together). Tensors: contiguous, on the job's device (CUDA for
// NCCL, CPU for Gloo).
void all_reduce_sum(std::vector<at::Tensor>& buckets);
void broadcast(std::vector<at::Tensor>& buckets, int root = 0);
// A sum started by all_reduce_sum_start. wait() returns once the tensor holds
// the sum (CUDA: once the current stream is ordered after it); throws
// pgolf::Error if the collective failed. Must be waited before the tensor is
// read or written again.
class PendingSum {
 public:
  virtual ~PendingSum() = default;
  virtual void wait() = 0;
};
// Starts summing `bucket` (contiguous, on the job's device) over the ranks and
// returns at once; a single rank gets a handle with nothing to wait for. May be
// called from the autograd engine's threads (gradient hooks), one at a time.
// Every rank must start the same sums in the same order.
std::unique_ptr<PendingSum> all_reduce_sum_start(const at::Tensor& bucket);
void barrier();
// Every rank's `mine` concatenated in rank order, on rank 0 (empty elsewhere).
// Exact: built from sums with zeros, in pieces of at most 2^24 values.
std::vector<double> gather_concat(const std::vector<double>& mine);

// The error path: tells the other ranks that this one failed (they stop) and
// ends the process with `exit_code` without running destructors (a process
// group with work in flight can block in them). Returns only on a single rank.
void abort_ranks(const std::string& message, int exit_code);
// The success path, after the last collective: a barrier, then an orderly
// teardown (rank 0 keeps the store up until every rank has let go of it).
void finish_ranks();

// Pure helpers (unit-tested).
// Items [n r / w, n (r + 1) / w): contiguous, in rank order, sizes differ by <= 1.
std::pair<uint64_t, uint64_t> even_split(uint64_t n, int rank, int world);

}  // namespace pgolf
