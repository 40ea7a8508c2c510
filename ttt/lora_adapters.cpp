#include "ttt/lora_adapters.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>

#include "data/error.h"
#include "model/pch.h"

namespace pgolf {

namespace {

// Host side of the generator: 64-bit mixing for the per-row key, murmur3's
// 32-bit finalizer per element (the device side below computes the same).
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

uint32_t row_hash(uint64_t seed, uint64_t row_key, const std::string& site) {
  return uint32_t(splitmix64(seed ^ splitmix64(row_key ^ splitmix64(fnv1a(site)))));
}

constexpr uint32_t kWeyl = 0x9E3779B9u, kMix1 = 0x85EBCA6Bu, kMix2 = 0xC2B2AE35u;

uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= kMix1;
  h ^= h >> 13;
  h *= kMix2;
  return h ^ (h >> 16);
}

// Device side, on int64 tensors holding values in [0, 2^32): products split so
// that nothing exceeds 2^49 (no signed overflow).
at::Tensor shr(const at::Tensor& h, int k) { return at::div(h, int64_t(1) << k, "floor"); }
at::Tensor mul32(const at::Tensor& h, uint32_t c) {
  const int64_t cc = int64_t(c);
  at::Tensor lo = at::bitwise_and(h, 0xFFFF), hi = shr(h, 16);
  return at::bitwise_and(lo * cc + at::bitwise_and(hi * cc, 0xFFFF) * 65536, int64_t(0xFFFFFFFF));
}
at::Tensor fmix32(at::Tensor h) {
  h = at::bitwise_xor(h, shr(h, 16));
  h = mul32(h, kMix1);
  h = at::bitwise_xor(h, shr(h, 13));
  h = mul32(h, kMix2);
  return at::bitwise_xor(h, shr(h, 16));
}

// U(-bound, bound) from the top 24 bits of a 32-bit hash.
double to_uniform(uint32_t h, double bound) { return (double(h >> 8) * 0x1p-23 - 1.0) * bound; }

}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q", "k", "v", "o", "mlp", "head"};
  return names;
}

std::vector<LoraSiteSpec> lora_sites(const ModelConfig& cfg, const std::vector<std::string>& targets, bool looping) {
  for (const std::string& t : targets) {
    const auto& n = lora_target_names();
    if (std::find(n.begin(), n.end(), t) == n.end())
      throw Error("ttt: unknown LoRA target '" + t + "' (expected some of q, k, v, o, mlp, head)");
  }
  auto has = [&](const char* t) { return std::find(targets.begin(), targets.end(), t) != targets.end(); };
  const int64_t d = cfg.model_dim, kv = int64_t(cfg.num_kv_heads) * cfg.head_dim();
  std::vector<LoraSiteSpec> out;
  const size_t steps = cfg.layer_sequence(looping).size();
  for (size_t s = 0; s < steps; ++s) {
    const int st = int(s);
    if (has("q")) out.push_back({lora_key(st, "q"), d, d});
    if (has("k")) out.push_back({lora_key(st, "k"), d, kv});
    if (has("v")) out.push_back({lora_key(st, "v"), d, kv});
    if (has("o")) out.push_back({lora_key(st, "o_norm"), d, d});
    if (has("mlp")) out.push_back({lora_key(st, "mlp"), d, d});
  }
  if (has("head")) out.push_back({"head", cfg.embed_dim(), cfg.vocab_size});
  return out;
}

double lora_init_value(uint64_t seed, uint64_t row_key, const std::string& site, uint64_t i, double bound) {
  return to_uniform(fmix32(row_hash(seed, row_key, site) + uint32_t(i) * kWeyl), bound);
}

BatchAdapters::BatchAdapters(std::vector<LoraSiteSpec> sites, int64_t rows, int64_t rank, at::ScalarType dtype,
                             const at::Device& device, std::optional<at::ScalarType> compute)
    : sites_(std::move(sites)), rows_(rows), rank_(rank) {
  if (sites_.empty()) throw Error("ttt: no adapter sites");
  // Every A first, then every B: the A blocks of consecutive sites with the
  // same input width form one [sites, rows, r * in] block, which reset()
  // fills with one chain of kernels.
  int64_t total = 0;
  for (const LoraSiteSpec& s : sites_) {
    if (rank * s.in >= (int64_t(1) << 32)) throw Error("ttt: adapter " + s.key + " is too large");
    a_offsets_.push_back(total);
    total += rows * rank * s.in;
  }
  for (const LoraSiteSpec& s : sites_) {
    b_offsets_.push_back(total);
    total += rows * s.out * rank;
  }
  params_ = at::zeros({total}, at::TensorOptions().dtype(dtype).device(device));
  if (compute && *compute != dtype) mirror_ = at::zeros({total}, params_.options().dtype(*compute));
  grad_ = at::zeros_like(mirror_.defined() ? mirror_ : params_);
  leaves_ = make_leaves(0, rows_);
  // Runs of sites to initialise together: same input width, a bounded
  // number of elements (the generator's int64 temporaries).
  const int64_t max_elements = int64_t(1) << 24;
  for (size_t k = 0; k < sites_.size(); ++k) {
    const int64_t n = rows_ * rank_ * sites_[k].in;
    if (!init_runs_.empty()) {
      InitRun& r = init_runs_.back();
      if (sites_[r.first].in == sites_[k].in && (r.count + 1) * n <= max_elements) {
        ++r.count;
        continue;
      }
    }
    init_runs_.push_back({k, 1});
  }
}

void BatchAdapters::zero_grad() {
  c10::NoGradGuard no_grad;
  grad_.zero_();
}

void BatchAdapters::reset(uint64_t seed, const std::vector<uint64_t>& row_keys) {
  if (int64_t(row_keys.size()) != rows_) throw Error("ttt: adapter reset with the wrong number of rows");
  c10::NoGradGuard no_grad;
  params_.narrow(0, b_offsets_.front(), params_.size(0) - b_offsets_.front()).zero_();  // every B
  grad_.zero_();
  // Every site's row hashes in one asynchronous copy (a plain copy would make
  // the host wait for the GPU's queue).
  std::vector<int64_t> keys;
  for (const LoraSiteSpec& s : sites_)
    for (uint64_t key : row_keys) keys.push_back(int64_t(row_hash(seed, key, s.key)));
  const at::Tensor all = to_device(at::tensor(keys, at::kLong), params_.device()).view({int64_t(sites_.size()), rows_});
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(params_.device());
  for (const InitRun& run : init_runs_) {
    // A of sites [first, first + count): [count, rows, r * in], contiguous.
    const int64_t in = sites_[run.first].in, n = rank_ * in, K = int64_t(run.count);
    at::Tensor rowh = all.narrow(0, int64_t(run.first), K).view({K, rows_, 1});
    at::Tensor h = fmix32(at::bitwise_and(rowh + mul32(at::arange(n, i64), kWeyl).view({1, 1, n}), int64_t(0xFFFFFFFF)));
    const double bound = 1.0 / std::sqrt(double(in));
    at::Tensor u = (shr(h, 8).to(at::kDouble) * 0x1p-23 - 1.0) * bound;  // [K, rows, r * in]: the reference's A
    params_.narrow(0, a_offsets_[run.first], K * rows_ * n)
        .view({K, rows_, in, rank_})
        .copy_(u.view({K, rows_, rank_, in}).transpose(2, 3));
  }
  if (mirror_.defined()) mirror_.copy_(params_);
}

LoraSet BatchAdapters::views() const { return leaves_; }

LoraSet BatchAdapters::make_leaves(int64_t first, int64_t count) const {
  c10::NoGradGuard no_grad;
  LoraSet set;
  const at::Tensor& values = mirror_.defined() ? mirror_ : params_;
  for (size_t k = 0; k < sites_.size(); ++k) {
    const LoraSiteSpec& s = sites_[k];
    auto leaf = [&](int64_t off, int64_t per_row, std::vector<int64_t> shape) {
      at::Tensor t = values.narrow(0, off + first * per_row, count * per_row).view(shape).detach();
      t.set_requires_grad(true);
      t.mutable_grad() = grad_.narrow(0, off + first * per_row, count * per_row).view(shape);
      return t;
    };
    set.adapters[s.key] = {leaf(a_offsets_[k], rank_ * s.in, {count, s.in, rank_}),
                           leaf(b_offsets_[k], s.out * rank_, {count, rank_, s.out})};
  }
  return set;
}

LoraSet BatchAdapters::views(int64_t first, int64_t count) const {
  if (first == 0 && count == rows_) return leaves_;
  if (first < 0 || count < 1 || first + count > rows_) throw Error("ttt: adapter rows out of range");
  // Leaves of their own over the rows' part of the buffer, with the matching
  // part of the gradient: backward adds into it directly, where a narrow of
  // the whole leaf would build and add a zero-filled whole-site gradient.
  LoraSet& set = range_leaves_[{first, count}];
  if (set.adapters.empty()) set = make_leaves(first, count);
  return set;
}

const FlatParts& BatchAdapters::row_parts(int64_t first, int64_t count) const {
  if (first < 0 || count < 1 || first + count > rows_) throw Error("ttt: adapter rows out of range");
  FlatParts& parts = range_parts_[{first, count}];
  if (!parts.host.empty()) return parts;
  auto add = [&](int64_t off, int64_t per_row) {
    const int64_t start = off + first * per_row, length = count * per_row;
    if (!parts.host.empty() && parts.host.back().first + parts.host.back().second == start)
      parts.host.back().second += length;  // contiguous with the last: one part
    else
      parts.host.emplace_back(start, length);
  };
  for (size_t k = 0; k < sites_.size(); ++k) add(a_offsets_[k], rank_ * sites_[k].in);
  for (size_t k = 0; k < sites_.size(); ++k) add(b_offsets_[k], sites_[k].out * rank_);
  std::vector<int64_t> flat;
  for (const auto& [start, length] : parts.host) flat.push_back(start), flat.push_back(length);
  parts.device = to_device(at::tensor(flat, at::kLong).view({-1, 2}), params_.device());
  return parts;
}

LoraSet BatchAdapters::views(const at::Tensor& rows) const {
  LoraSet set = leaves_;
  for (auto& [key, a] : set.adapters) {
    a.A = a.A.index_select(0, rows);
    a.B = a.B.index_select(0, rows);
  }
  return set;
}

}  // namespace pgolf
