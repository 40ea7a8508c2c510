// The one place where pgolf bridges libtorch versions: Debian 12's 1.13.1
// (CPU) and the 2.11 + CUDA build inside the GPU machine's PyTorch wheel.
// Everything version-dependent goes here, nowhere else.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/api/include/torch/version.h>

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>
#if defined(PGOLF_COMPAT_PROFILER) && PGOLF_WITH_CUDA
#include <set>
#include <torch/csrc/autograd/profiler_kineto.h>
#endif
#if defined(PGOLF_COMPAT_C10D)  // c10d, for model/distributed.cpp only (see below)
#include <chrono>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#if PGOLF_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if PGOLF_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif
#if defined(PGOLF_COMPAT_GRAD_HOOKS)  // gradient-ready hooks, for model/grad_reducer.cpp only (see below)
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <functional>
#include <memory>
#endif

#define PGOLF_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#if PGOLF_TORCH_AT_LEAST(2, 0)
#include <ATen/core/dispatch/Dispatcher.h>
#include <optional>
#else
#include <c10/util/Optional.h>
#endif

namespace pgolf::compat {

// libtorch 2.x takes std::optional in its operator signatures; 1.13 takes c10::optional.
#if PGOLF_TORCH_AT_LEAST(2, 0)
template <class T>
using optional = std::optional<T>;
inline constexpr auto nullopt = std::nullopt;
#else
template <class T>
using optional = c10::optional<T>;
inline constexpr auto nullopt = c10::nullopt;
#endif

// Fused causal attention (flash / memory-efficient SDPA kernels) exists from
// libtorch 2.0 on; 1.13 has only the explicit path.
#if PGOLF_TORCH_AT_LEAST(2, 0)
constexpr bool has_fused_causal_attention = true;
// q [B, H, T, hd], k/v [B, H, T, hd] (same heads), bf16 on CUDA -> [B, H, T, hd].
inline at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
}
#else
constexpr bool has_fused_causal_attention = false;
inline at::Tensor fused_causal_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::runtime_error("fused attention needs libtorch >= 2.0");
}
#endif

// Variable-length flash attention with a causal sliding window (ATen's
// _flash_attention_forward with cumulative sequence lengths) from 2.6 on.
#if PGOLF_TORCH_AT_LEAST(2, 6)
constexpr bool has_varlen_flash_attention = true;
// Dense flash attention for autograd (fused::flash_attention's Function;
// shapes as dense_flash_attention below): the forward keeps what the backward
// reads (flash_attention_backward).
struct FlashForward {
  at::Tensor out, lse, rng_state, unused;  // out [B, Q, H, hd]; lse [B, H, Q] float32
};
inline FlashForward dense_flash_attention_saved(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                int64_t window_left) {
  auto r = at::_flash_attention_forward(q, k, v, std::nullopt, std::nullopt, q.size(1), k.size(1), /*dropout_p=*/0.0,
                                        /*is_causal=*/true, /*return_debug_mask=*/false, /*scale=*/std::nullopt,
                                        /*window_size_left=*/window_left, /*window_size_right=*/int64_t(0));
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}
// Packed sequences: q [total, H, hd], k/v [total, KV, hd] (bf16, CUDA);
// cu_seqlens int32 [n + 1]; a key j is visible to query i of its sequence if
// j <= i and i - j <= window_left (window_left < 0: unlimited). out [total,
// H, hd]; the rest is what the backward reads.
inline FlashForward varlen_flash_attention_saved(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left) {
  auto r = at::_flash_attention_forward(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0,
                                        /*is_causal=*/true, /*return_debug_mask=*/false, /*scale=*/std::nullopt,
                                        /*window_size_left=*/window_left, /*window_size_right=*/int64_t(0));
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}
inline at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left) {
  return varlen_flash_attention_saved(q, k, v, cu_seqlens, max_seqlen, window_left).out;
}
// Dense batch: q [B, Q, H, hd], k/v [B, T, KV, hd] with Q <= T (the queries
// are the last Q positions: flash aligns the causal mask bottom-right; KV
// divides H: grouped heads without copying k/v), causal with the same window
// rule -> [B, Q, H, hd].
inline at::Tensor dense_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       int64_t window_left) {
  return dense_flash_attention_saved(q, k, v, window_left).out;
}
// Flash's backward. deterministic: its kernels without atomics in dq (the
// same bits run to run, ~6% slower on packed training rows); else its
// default ones. ATen decides from the global flag inside the call, so the
// flag is set for that call only. cu_seqlens undefined: dense batches of
// max_q / max_k positions.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FlashForward& f,
    const at::Tensor& cu_seqlens, int64_t max_q, int64_t max_k, int64_t window_left, bool deterministic) {
  struct Determinism {
    at::Context& ctx = at::globalContext();
    bool was = ctx.deterministicAlgorithms(), warn_only = ctx.deterministicAlgorithmsWarnOnly();
    explicit Determinism(bool on) { ctx.setDeterministicAlgorithms(on, false); }
    ~Determinism() { ctx.setDeterministicAlgorithms(was, warn_only); }
  } determinism(deterministic);
  return at::_flash_attention_backward(grad, q, k, v, f.out, f.lse, cu_seqlens, cu_seqlens, max_q, max_k,
                                       /*dropout_p=*/0.0, /*is_causal=*/true, f.rng_state, f.unused,
                                       /*scale=*/std::nullopt, /*window_size_left=*/window_left,
                                       /*window_size_right=*/int64_t(0));
}
// -> dq, dk, dv (dk, dv summed over each KV head's query heads).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_flash_attention_backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FlashForward& f,
    int64_t window_left, bool deterministic) {
  return flash_attention_backward(grad, q, k, v, f, at::Tensor(), q.size(1), k.size(1), window_left, deterministic);
}
// The same for packed sequences (cu_seqlens int32 [n + 1]).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_flash_attention_backward(
    const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FlashForward& f,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t window_left, bool deterministic) {
  return flash_attention_backward(grad, q, k, v, f, cu_seqlens, max_seqlen, max_seqlen, window_left, deterministic);
}
#else
constexpr bool has_varlen_flash_attention = false;
struct FlashForward {
  at::Tensor out, lse, rng_state, unused;
};
inline FlashForward dense_flash_attention_saved(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
  throw std::runtime_error("flash attention needs libtorch >= 2.6");
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_flash_attention_backward(const at::Tensor&,
                                                                                    const at::Tensor&,
                                                                                    const at::Tensor&,
                                                                                    const at::Tensor&,
                                                                                    const FlashForward&, int64_t,
                                                                                    bool) {
  throw std::runtime_error("flash attention needs libtorch >= 2.6");
}
inline at::Tensor dense_flash_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
  throw std::runtime_error("flash attention needs libtorch >= 2.6");
}
inline at::Tensor varlen_flash_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, int64_t) {
  throw std::runtime_error("varlen flash attention needs libtorch >= 2.6");
}
inline FlashForward varlen_flash_attention_saved(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, int64_t, int64_t) {
  throw std::runtime_error("varlen flash attention needs libtorch >= 2.6");
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_flash_attention_backward(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const FlashForward&, const at::Tensor&,
    int64_t, int64_t, bool) {
  throw std::runtime_error("varlen flash attention needs libtorch >= 2.6");
}
#endif

// cuDNN's fused attention (Hopper wgmma kernels), dense and causal with equal
// query and key lengths: q, k, v [B, H, T, hd] (k/v expanded to H heads),
// bf16 on CUDA -> [B, H, T, hd]. From 2.5 on; bench/fused_check times it
// against flash.
#if PGOLF_TORCH_AT_LEAST(2, 5)
constexpr bool has_cudnn_attention = true;
inline at::Tensor cudnn_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  auto out = at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt, /*compute_log_sumexp=*/false,
                                                     /*dropout_p=*/0.0, /*is_causal=*/true);
  return std::get<0>(out);
}
#else
constexpr bool has_cudnn_attention = false;
inline at::Tensor cudnn_causal_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::runtime_error("cuDNN attention needs libtorch >= 2.5");
}
#endif

// cuDNN's fused attention under autograd (training on Hopper), causal and
// dense: q [B, H, T, hd], k/v [B, KV, T, hd] (any strides, KV dividing H,
// grouped heads direct). Its backward is not deterministic (dq by atomics):
// TTT keeps flash's deterministic kernels. The operators are called through
// the dispatcher by argument name, since their argument order has changed
// between releases; a libtorch without them says so
// (cudnn_training_attention_available), and callers keep flash or SDPA.
struct CudnnForward {
  at::Tensor out, lse, seed, offset;
};
// An optional tensor's value (None: an undefined tensor).
inline at::Tensor tensor_or_undefined(const c10::IValue& v) { return v.isTensor() ? v.toTensor() : at::Tensor(); }
#if PGOLF_TORCH_AT_LEAST(2, 6)
inline bool cudnn_training_attention_available() {
  static const bool ok = c10::Dispatcher::singleton().findSchema({"aten::_cudnn_attention_forward", ""}).has_value() &&
                         c10::Dispatcher::singleton().findSchema({"aten::_cudnn_attention_backward", ""}).has_value();
  return ok;
}
// `op` with the named arguments; the others take their defaults. A tensor
// given as None where the schema wants a Tensor goes as an undefined tensor.
inline std::vector<c10::IValue> call_by_name(const char* op, const std::map<std::string, c10::IValue>& args) {
  const c10::OperatorHandle h = c10::Dispatcher::singleton().findSchemaOrThrow(op, "");
  std::vector<c10::IValue> stack;
  for (const c10::Argument& a : h.schema().arguments()) {
    const auto it = args.find(a.name());
    if (it != args.end()) {
      const bool optional = a.type()->kind() == c10::TypeKind::OptionalType;
      stack.push_back(it->second.isNone() && !optional ? c10::IValue(at::Tensor()) : it->second);
    } else if (a.default_value()) {
      stack.push_back(*a.default_value());
    } else {
      throw std::runtime_error(std::string(op) + ": pgolf gives no value for its argument '" + a.name() + "'");
    }
  }
  h.callBoxed(&stack);
  return stack;
}
inline CudnnForward cudnn_attention_saved(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const std::vector<c10::IValue> r = call_by_name(
      "aten::_cudnn_attention_forward",
      {{"query", q}, {"key", k}, {"value", v}, {"attn_bias", c10::IValue()}, {"cum_seq_q", c10::IValue()},
       {"cum_seq_k", c10::IValue()}, {"max_q", q.size(2)}, {"max_k", k.size(2)}, {"compute_log_sumexp", true},
       {"dropout_p", 0.0}, {"is_causal", true}, {"return_debug_mask", false}, {"scale", c10::IValue()}});
  // (output, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, debug_attn_mask)
  return {r.at(0).toTensor(), r.at(1).toTensor(), tensor_or_undefined(r.at(6)), tensor_or_undefined(r.at(7))};
}
// -> dq, dk, dv (dk, dv summed over each KV head's query heads).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> cudnn_attention_backward(const at::Tensor& grad,
                                                                               const at::Tensor& q, const at::Tensor& k,
                                                                               const at::Tensor& v,
                                                                               const CudnnForward& f) {
  auto opt = [](const at::Tensor& t) { return t.defined() ? c10::IValue(t) : c10::IValue(); };
  const std::vector<c10::IValue> r = call_by_name(
      "aten::_cudnn_attention_backward",
      {{"grad_out", grad}, {"query", q}, {"key", k}, {"value", v}, {"out", f.out}, {"logsumexp", f.lse},
       {"philox_seed", opt(f.seed)}, {"philox_offset", opt(f.offset)}, {"attn_bias", c10::IValue()},
       {"cum_seq_q", c10::IValue()}, {"cum_seq_k", c10::IValue()}, {"max_q", q.size(2)}, {"max_k", k.size(2)},
       {"dropout_p", 0.0}, {"is_causal", true}, {"scale", c10::IValue()}});
  return {r.at(0).toTensor(), r.at(1).toTensor(), r.at(2).toTensor()};
}
#else
inline bool cudnn_training_attention_available() { return false; }
inline CudnnForward cudnn_attention_saved(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw std::runtime_error("cuDNN attention under autograd needs libtorch >= 2.6");
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> cudnn_attention_backward(const at::Tensor&, const at::Tensor&,
                                                                               const at::Tensor&, const at::Tensor&,
                                                                               const CudnnForward&) {
  throw std::runtime_error("cuDNN attention under autograd needs libtorch >= 2.6");
}
#endif

// A Kineto trace of everything between start and stop (CUDA builds of
// libtorch >= 2.0, which ship Kineto), saved as Chrome-trace JSON. Only the
// file that defines PGOLF_COMPAT_PROFILER pulls in the profiler headers.
#if defined(PGOLF_COMPAT_PROFILER) && PGOLF_WITH_CUDA && PGOLF_TORCH_AT_LEAST(2, 0)
constexpr bool has_profiler = true;
inline std::set<torch::profiler::impl::ActivityType> profiler_activities() {
  return {torch::profiler::impl::ActivityType::CPU, torch::profiler::impl::ActivityType::CUDA};
}
inline void start_profiler() {
  const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
  torch::autograd::profiler::prepareProfiler(cfg, profiler_activities());
  torch::autograd::profiler::enableProfiler(cfg, profiler_activities());
}
inline void stop_profiler(const std::string& path) { torch::autograd::profiler::disableProfiler()->save(path); }
#elif defined(PGOLF_COMPAT_PROFILER)
constexpr bool has_profiler = false;
inline void start_profiler() { throw std::runtime_error("profiling needs a CUDA build of libtorch >= 2.0"); }
inline void stop_profiler(const std::string&) {}
#endif

// c10d (model/distributed.cpp, the only file that defines PGOLF_COMPAT_C10D).
// TCPStore, PrefixStore and ProcessGroupGloo keep the same constructor and
// collective signatures from 1.13 to 2.11 (ProcessGroupGloo's base class moved
// from ProcessGroup to Backend in 2.x; pgolf never names it). What differs:
// - TCPStoreOptions::numWorkers is c10::optional (1.13) / std::optional (2.x):
//   assigning a size_t works for both. 2.x adds useLibUV (default on).
// - The process groups' orderly teardown: ProcessGroupNCCL has shutdown() in
//   2.x (its destructor warns without it); 1.13's groups tear down in their
//   destructors. shutdown_group calls it where it exists (pgolf: NCCL only).
// - ProcessGroupNCCL (CUDA builds with nccl.h, PGOLF_WITH_NCCL): Options::create()
//   takes no timeout; the timeout is the Backend::Options member.
// Gloo and NCCL headers are guarded by USE_C10D_GLOO / USE_C10D_NCCL, which the
// including file defines from PGOLF_WITH_GLOO / PGOLF_WITH_NCCL.
#if defined(PGOLF_COMPAT_C10D)

inline c10d::TCPStoreOptions tcp_store_options(uint16_t port, bool server, size_t workers, bool wait_workers,
                                               std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = server;
  if (wait_workers) o.numWorkers = workers;
  o.waitWorkers = wait_workers;
  o.timeout = timeout;
  return o;
}

namespace detail {
template <class G, class = void>
struct has_shutdown : std::false_type {};
template <class G>
struct has_shutdown<G, std::void_t<decltype(std::declval<G&>().shutdown())>> : std::true_type {};
}  // namespace detail
template <class G>
void shutdown_group(G& g) {
  if constexpr (detail::has_shutdown<G>::value) g.shutdown();
}

#if PGOLF_WITH_GLOO
// The transport binds to the network interface `iface`, else to the address
// `host`, else to the address this machine's hostname resolves to.
inline c10::intrusive_ptr<c10d::ProcessGroupGloo> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                            int world, const std::string& iface,
                                                            const std::string& host,
                                                            std::chrono::milliseconds timeout) {
  using G = c10d::ProcessGroupGloo;
  auto opts = G::Options::create(timeout);
  opts->devices.push_back(!iface.empty() ? G::createDeviceForInterface(iface)
                          : !host.empty() ? G::createDeviceForHostname(host)
                                          : G::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
}
#endif
#if PGOLF_WITH_NCCL
inline c10::intrusive_ptr<c10d::ProcessGroupNCCL> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                            int world, std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
}
#endif
#endif  // PGOLF_COMPAT_C10D

// Gradient-ready hooks for the data-parallel reducer (model/grad_reducer.cpp,
// the only file that defines PGOLF_COMPAT_GRAD_HOOKS): a post-hook on a leaf's
// AccumulateGrad node runs right after a backward pass has added into
// leaf.grad(), on the autograd engine's thread for the leaf's device. This is
// what DDP's C++ reducer uses, in 1.13 and in 2.x alike:
// torch::autograd::impl::grad_accumulator (creates the node; the leaf holds it
// only weakly, so the hook's owner keeps it), Node::add_post_hook (returns a
// key) / Node::del_post_hook, and FunctionPostHook::operator()(outputs,
// inputs). 2.x adds FunctionPostHook::compiled_args (compiled autograd only;
// its default throws there, unused here) and a tensor-level
// PostAccumulateGradHook (2.1 on, absent in 1.13: not used).
#if defined(PGOLF_COMPAT_GRAD_HOOKS)
struct GradReadyHook {
  std::shared_ptr<torch::autograd::Node> accumulator;
  uintptr_t key = 0;
};
// Calls fn after every backward pass that reaches `leaf` (a tensor that
// requires grad and has no grad_fn) has accumulated into leaf.grad().
inline GradReadyHook add_grad_ready_hook(const at::Tensor& leaf, std::function<void()> fn) {
  struct Post final : torch::autograd::FunctionPostHook {
    explicit Post(std::function<void()> f) : f_(std::move(f)) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                              const torch::autograd::variable_list& /*inputs*/) override {
      f_();
      return outputs;
    }
    std::function<void()> f_;
  };
  GradReadyHook h;
  h.accumulator = torch::autograd::impl::grad_accumulator(leaf);
  if (!h.accumulator) throw std::runtime_error("a gradient hook on a tensor that does not require grad");
  h.key = h.accumulator->add_post_hook(std::make_unique<Post>(std::move(fn)));
  return h;
}
inline void remove_grad_ready_hook(GradReadyHook& h) {
  if (h.accumulator) h.accumulator->del_post_hook(h.key);
  h.accumulator.reset();
}
#endif  // PGOLF_COMPAT_GRAD_HOOKS

// TF32 tensor-core products for float32 matmuls on CUDA, as the reference
// runs with torch.backends.cuda.matmul.allow_tf32 = True (GPTQ's Hessians).
// Context::setAllowTF32CuBLAS where this libtorch has it, else nothing.
namespace detail {
template <class C, class = void>
struct has_allow_tf32 : std::false_type {};
template <class C>
struct has_allow_tf32<C, std::void_t<decltype(std::declval<C&>().setAllowTF32CuBLAS(true)),
                                     decltype(std::declval<const C&>().allowTF32CuBLAS())>> : std::true_type {};
template <class C>
bool allow_tf32(const C& c) {
  if constexpr (has_allow_tf32<C>::value) return c.allowTF32CuBLAS();
  else return false;
}
template <class C>
void set_allow_tf32(C& c, bool on) {
  if constexpr (has_allow_tf32<C>::value) c.setAllowTF32CuBLAS(on);
}
}  // namespace detail
// Scoped: restores the previous setting.
class Tf32MatmulGuard {
 public:
  explicit Tf32MatmulGuard(bool on) : prev_(detail::allow_tf32(at::globalContext())) {
    detail::set_allow_tf32(at::globalContext(), on);
  }
  ~Tf32MatmulGuard() { detail::set_allow_tf32(at::globalContext(), prev_); }
  Tf32MatmulGuard(const Tf32MatmulGuard&) = delete;
  Tf32MatmulGuard& operator=(const Tf32MatmulGuard&) = delete;

 private:
  bool prev_;
};

constexpr int torch_major = TORCH_VERSION_MAJOR;
constexpr int torch_minor = TORCH_VERSION_MINOR;
constexpr int torch_patch = TORCH_VERSION_PATCH;

}  // namespace pgolf::compat
