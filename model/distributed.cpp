// c10d process groups for multi-rank runs (see distributed.h for the contract).
// The only file that includes c10d: the backend switches come from CMake
// (PGOLF_WITH_GLOO / PGOLF_WITH_NCCL) and guard the c10d headers' own
// USE_C10D_GLOO / USE_C10D_NCCL; version differences live in torch_compat.h.
#define PGOLF_COMPAT_C10D
#if PGOLF_WITH_GLOO && !defined(USE_C10D_GLOO)  // Debian's TorchConfig defines it already
#define USE_C10D_GLOO
#endif
#if PGOLF_WITH_NCCL && !defined(USE_C10D_NCCL)
#define USE_C10D_NCCL
#endif
#include "model/distributed.h"

#include <ATen/ATen.h>
#if PGOLF_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "data/error.h"
#include "model/torch_compat.h"

namespace pgolf {

namespace {

using namespace std::chrono_literals;

const char* const kLaunch =
    " (launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)";
const std::string kFailedKey = "failed", kSeenKey = "failure_seen", kDonePrefix = "done/";

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

long env_int(const char* name, long lo, long hi) {
  const std::string s = env(name);
  char* end = nullptr;
  errno = 0;
  const long v = s.empty() ? 0 : std::strtol(s.c_str(), &end, 10);
  if (s.empty() || errno != 0 || *end != '\0' || v < lo || v > hi)
    throw Error(std::string(name) + "='" + s + "' is not an integer in [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "]" + kLaunch);
  return v;
}

// The first line of an exception's message (c10::Error appends a backtrace).
std::string first_line(const std::exception& e) {
  std::string s = e.what();
  return s.substr(0, s.find('\n'));
}

// c10d errors (a peer that vanished, a timeout) as one-line pgolf errors.
template <class F>
void collective(const char* what, F f) {
  try {
    f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(std::string(what) + " across ranks failed (did another rank stop?): " + first_line(e));
  }
}

// One backend's collectives behind a small interface (Gloo and NCCL share the
// c10d signatures; their base class differs between libtorch versions).
class Comm {
 public:
  virtual ~Comm() = default;
  virtual std::unique_ptr<PendingSum> start_all_reduce(const at::Tensor& bucket) = 0;
  virtual void broadcast(std::vector<at::Tensor>& buckets, int root) = 0;
  virtual void shutdown() = 0;
  virtual at::Device device() const = 0;
};

// One all-reduce in flight: the work handle, and the tensor list it was given
// (kept alive until it is done).
template <class WorkPtr>
class GroupPending final : public PendingSum {
 public:
  void wait() override {
    if (!work) return;
    collective("an all-reduce", [&] { work->wait(); });
    work.reset();
  }
  std::vector<at::Tensor> args;
  WorkPtr work;
};

template <class Group>
class GroupComm final : public Comm {
 public:
  GroupComm(c10::intrusive_ptr<Group> g, at::Device device, bool orderly_shutdown)
      : g_(std::move(g)), device_(device), orderly_shutdown_(orderly_shutdown) {}
  std::unique_ptr<PendingSum> start_all_reduce(const at::Tensor& bucket) override {
    using WorkPtr = decltype(std::declval<Group&>().allreduce(std::declval<std::vector<at::Tensor>&>(),
                                                              std::declval<const c10d::AllreduceOptions&>()));
    auto p = std::make_unique<GroupPending<WorkPtr>>();
    p->args = {bucket};
    c10d::AllreduceOptions opts;  // reduceOp: SUM by default
    collective("an all-reduce", [&] { p->work = g_->allreduce(p->args, opts); });
    return p;
  }
  void broadcast(std::vector<at::Tensor>& buckets, int root) override {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    run(buckets, [&](std::vector<at::Tensor>& one) { return g_->broadcast(one, opts); });
  }
  void shutdown() override {
    if (orderly_shutdown_) compat::shutdown_group(*g_);
    g_.reset();
  }
  at::Device device() const override { return device_; }

 private:
  // One collective per bucket (c10d's tensor lists mean one tensor per local
  // device, not several buffers), all in flight, then waited for in order.
  template <class Launch>
  void run(std::vector<at::Tensor>& buckets, Launch launch) {
    using WorkPtr = decltype(launch(std::declval<std::vector<at::Tensor>&>()));
    std::vector<std::vector<at::Tensor>> args;
    args.reserve(buckets.size());  // no reallocation while collectives hold them
    std::vector<WorkPtr> works;
    for (at::Tensor& t : buckets) {
      args.push_back({t});
      works.push_back(launch(args.back()));
    }
    for (auto& w : works) w->wait();
  }

  c10::intrusive_ptr<Group> g_;
  at::Device device_;
  bool orderly_shutdown_;
};

// The job: never destroyed (the error path leaves with _Exit).
struct Job {
  Ranks ranks;
  bool joined = false;
  bool hosts_store = false;  // rank 0 without torchrun's agent store
  std::chrono::milliseconds timeout{1800 * 1000};
  c10::intrusive_ptr<c10d::Store> store;    // this rank's keys ("pgolf/...")
  c10::intrusive_ptr<c10d::Store> watched;  // the watcher's own connection
  std::unique_ptr<Comm> comm;
  std::thread watcher;
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;  // under mu: the watcher reports nothing any more
};

Job& job() {
  static Job* j = new Job;
  return *j;
}

// A client of the job's store (the server too on rank 0 when it hosts it),
// scoped to pgolf's keys. torchrun >= 2.x may host the store in its agent and
// say so (TORCHELASTIC_USE_AGENT_STORE=True): then every rank is a client
// under the agent's "/worker/attempt_N" prefix, as torch.distributed does.
c10::intrusive_ptr<c10d::Store> connect_store(const Job& j, bool main_client) {
  const std::string host = env("MASTER_ADDR");
  const uint16_t port = uint16_t(env_int("MASTER_PORT", 1, 65535));
  const bool agent = env("TORCHELASTIC_USE_AGENT_STORE") == "True";
  const bool server = main_client && !agent && j.ranks.rank == 0;
  try {
    c10::intrusive_ptr<c10d::Store> s = c10::make_intrusive<c10d::TCPStore>(
        host, compat::tcp_store_options(port, server, size_t(j.ranks.world), main_client, j.timeout));
    if (agent) {
      const std::string attempt = env("TORCHELASTIC_RESTART_COUNT");
      s = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + (attempt.empty() ? "0" : attempt), s);
    }
    return c10::make_intrusive<c10d::PrefixStore>("pgolf", s);
  } catch (const std::exception& e) {
    throw Error(std::string(server ? "cannot host" : "cannot reach") + " the job's store at " + host + ":" +
                std::to_string(port) + ": " + first_line(e));
  }
}

std::unique_ptr<Comm> make_comm(const Job& j, bool cuda) {
  // The process group's keys live under their own prefix of the same store.
  [[maybe_unused]] auto store = c10::make_intrusive<c10d::PrefixStore>("pg", j.store);
  [[maybe_unused]] const int rank = j.ranks.rank, world = j.ranks.world;
  if (cuda) {
#if PGOLF_WITH_NCCL
    const at::Device dev(at::kCUDA, c10::DeviceIndex(j.ranks.local_rank));
    return std::make_unique<GroupComm<c10d::ProcessGroupNCCL>>(compat::make_nccl(store, rank, world, j.timeout), dev,
                                                               true);
#else
    throw Error("multi-rank CUDA runs need NCCL, and this build has none (nccl.h or ProcessGroupNCCL.hpp was not "
                "found when it was configured)");
#endif
  }
#if PGOLF_WITH_GLOO
  // Gloo binds to an address of this host: the loopback for a loopback
  // master, the interface GLOO_SOCKET_IFNAME names, else the hostname's.
  const std::string master = env("MASTER_ADDR"), iface = env("GLOO_SOCKET_IFNAME");
  const bool loopback = master == "127.0.0.1" || master == "localhost" || master == "::1";
  auto g = compat::make_gloo(store, rank, world, iface, loopback ? "127.0.0.1" : "", j.timeout);
  return std::make_unique<GroupComm<c10d::ProcessGroupGloo>>(std::move(g), at::Device(at::kCPU), false);
#else
  throw Error("multi-rank CPU runs need Gloo, and this build has none (the gloo headers were not found when it was "
              "configured; Debian: apt-get install libgloo-dev)");
#endif
}

[[noreturn]] void stop_now(const std::string& why) {
  std::fprintf(stderr, "pgolf: error: rank %d: stopping: %s\n", job().ranks.rank, why.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// Polls the failure mark every 200 ms; a store that stops answering means
// rank 0 (or torchrun's agent) is gone.
void watch(Job* j) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(j->mu);
      if (j->cv.wait_for(lk, 200ms, [&] { return j->stopping; })) return;
    }
    std::string why;
    try {
      if (!j->watched->check({kFailedKey})) continue;
      const std::vector<uint8_t> v = j->watched->get(kFailedKey);
      why.assign(v.begin(), v.end());
      j->watched->add(kSeenKey, 1);
    } catch (const std::exception&) {
      why = "lost the job's store (rank 0 or the launcher is gone)";
    }
    std::lock_guard<std::mutex> lk(j->mu);
    if (j->stopping) return;
    stop_now(why);
  }
}

void stop_watcher(Job& j) {
  {
    std::lock_guard<std::mutex> lk(j.mu);
    j.stopping = true;
  }
  j.cv.notify_all();
  if (j.watcher.joinable()) j.watcher.join();
}

Comm& comm() {
  Job& j = job();
  if (!j.comm) throw Error("internal: a collective before init_ranks");
  return *j.comm;
}

}  // namespace

std::pair<uint64_t, uint64_t> even_split(uint64_t n, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error("rank " + std::to_string(rank) + " outside a world of " + std::to_string(world));
  using u128 = unsigned __int128;
  const auto at = [&](int r) { return uint64_t(u128(n) * unsigned(r) / unsigned(world)); };
  return {at(rank), at(rank + 1)};
}

Ranks ranks_from_env() {
  Ranks r;
  if (env("WORLD_SIZE").empty()) return r;
  r.world = int(env_int("WORLD_SIZE", 1, 1 << 20));
  if (r.world == 1) return r;
  r.rank = int(env_int("RANK", 0, r.world - 1));
  r.local_rank = env("LOCAL_RANK").empty() ? r.rank : int(env_int("LOCAL_RANK", 0, r.world - 1));
  if (env("MASTER_ADDR").empty())
    throw Error("WORLD_SIZE=" + std::to_string(r.world) + " but MASTER_ADDR is not set" + kLaunch);
  env_int("MASTER_PORT", 1, 65535);
  return r;
}

const Ranks& init_ranks(bool cuda) {
  Job& j = job();
  if (j.joined) return j.ranks;
  const Ranks r = ranks_from_env();
  if (!r.multi()) {
    j.joined = true;
    return j.ranks;
  }
  j.ranks = r;
  if (!env("PGOLF_DIST_TIMEOUT").empty())
    j.timeout = std::chrono::milliseconds(1000 * env_int("PGOLF_DIST_TIMEOUT", 1, 7 * 24 * 3600));
  if (cuda) {
#if PGOLF_WITH_CUDA
    const int n = int(c10::cuda::device_count());
    if (r.local_rank >= n)
      throw Error("LOCAL_RANK=" + std::to_string(r.local_rank) + " but " + std::to_string(n) +
                  " CUDA devices are visible");
    c10::cuda::set_device(c10::DeviceIndex(r.local_rank));  // before anything touches the GPU
#else
    throw Error("internal: CUDA ranks in a CPU build");
#endif
  }
  j.hosts_store = r.rank == 0 && env("TORCHELASTIC_USE_AGENT_STORE") != "True";
  j.store = connect_store(j, true);
  j.watched = connect_store(j, false);
  j.comm = make_comm(j, cuda);
  j.watcher = std::thread(watch, &j);
  j.joined = true;
  return j.ranks;
}

const Ranks& ranks() { return job().ranks; }

std::string rank_label() { return ranks().multi() ? "rank " + std::to_string(ranks().rank) + ": " : ""; }

void all_reduce_sum(std::vector<double>& values) {
  if (!ranks().multi() || values.empty()) return;
  Comm& c = comm();
  at::Tensor cpu = at::from_blob(values.data(), {int64_t(values.size())}, at::kDouble);
  const at::Tensor t = c.device().is_cpu() ? cpu : cpu.to(c.device());
  c.start_all_reduce(t)->wait();
  if (!c.device().is_cpu()) cpu.copy_(t.to(at::kCPU));
}

void all_reduce_sum(std::vector<at::Tensor>& buckets) {
  if (!ranks().multi() || buckets.empty()) return;
  std::vector<std::unique_ptr<PendingSum>> sums;  // all in flight, then waited for in order
  for (const at::Tensor& t : buckets) sums.push_back(comm().start_all_reduce(t));
  for (auto& s : sums) s->wait();
}

std::unique_ptr<PendingSum> all_reduce_sum_start(const at::Tensor& bucket) {
  struct Done final : PendingSum {
    void wait() override {}
  };
  if (!ranks().multi()) return std::make_unique<Done>();
  return comm().start_all_reduce(bucket);
}

void broadcast(std::vector<at::Tensor>& buckets, int root) {
  if (!ranks().multi() || buckets.empty()) return;
  collective("a broadcast", [&] { comm().broadcast(buckets, root); });
}

void barrier() {
  if (!ranks().multi()) return;
  std::vector<double> one = {1.0};
  all_reduce_sum(one);
}

std::vector<double> gather_concat(const std::vector<double>& mine) {
  const Ranks& r = ranks();
  if (!r.multi()) return mine;
  std::vector<double> counts(size_t(r.world), 0.0);
  counts[size_t(r.rank)] = double(mine.size());
  all_reduce_sum(counts);
  uint64_t begin = 0, total = 0;
  for (int k = 0; k < r.world; ++k) {
    if (k == r.rank) begin = total;
    total += uint64_t(counts[size_t(k)]);
  }
  const uint64_t end = begin + mine.size();
  constexpr uint64_t kPiece = uint64_t(1) << 24;
  std::vector<double> out, piece;
  if (r.root()) out.reserve(total);
  for (uint64_t c0 = 0; c0 < total; c0 += kPiece) {
    const uint64_t c1 = std::min(total, c0 + kPiece);
    piece.assign(c1 - c0, 0.0);  // x + 0.0 == x: the sums are the values themselves
    for (uint64_t i = std::max(c0, begin); i < std::min(c1, end); ++i) piece[i - c0] = mine[i - begin];
    all_reduce_sum(piece);
    if (r.root()) out.insert(out.end(), piece.begin(), piece.end());
  }
  return out;
}

void abort_ranks(const std::string& message, int exit_code) {
  Job& j = job();
  if (!j.ranks.multi() || !j.store) return;
  {
    std::lock_guard<std::mutex> lk(j.mu);
    j.stopping = true;  // this rank's own failure is not news to its watcher
  }
  try {
    std::string m = "rank " + std::to_string(j.ranks.rank) + " failed: " + message;
    for (char& c : m)
      if (c == '\n' || c == '\r') c = ' ';  // the others print it as one line
    j.store->set(kFailedKey, std::vector<uint8_t>(m.begin(), m.end()));
    // The store dies with its host: give the others up to 2 s to read the mark.
    if (j.hosts_store)
      for (int i = 0; i < 40 && j.store->add(kSeenKey, 0) < j.ranks.world - 1; ++i) std::this_thread::sleep_for(50ms);
  } catch (const std::exception&) {
    // The store is gone already: the others notice that instead.
  }
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(exit_code);
}

void finish_ranks() {
  Job& j = job();
  if (!j.ranks.multi() || !j.comm) return;
  barrier();  // every rank is past its last collective
  stop_watcher(j);
  try {
    j.comm->shutdown();
    j.comm.reset();
    const std::string mine = kDonePrefix + std::to_string(j.ranks.rank);
    if (j.hosts_store) {
      std::vector<std::string> keys;
      for (int k = 1; k < j.ranks.world; ++k) keys.push_back(kDonePrefix + std::to_string(k));
      j.store->wait(keys, j.timeout);  // the others still use the store until they say so
    } else {
      j.store->set(mine, std::vector<uint8_t>{uint8_t('1')});
    }
  } catch (const std::exception& e) {
    throw Error("shutting the ranks down failed: " + first_line(e));
  }
  j.watched.reset();
  j.store.reset();
}

}  // namespace pgolf
