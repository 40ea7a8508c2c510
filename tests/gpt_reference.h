// An independent float64 restatement of the GPT forward with plain loops, for
// tests: the libtorch forward and everything built on it are checked against
// it. Written from the reference scripts' semantics (SPEC §5, §10 and the
// 2026-04-10_VarLenAttn model), not from model/gpt.cpp.
#pragma once
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "model/gpt.h"
#include "model/pch.h"

namespace pgolf::test {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows

// One row's adapters, by lora_key / "head": delta(x) = B (A x), A [r][in], B [out][r].
struct RefLora {
  std::map<std::string, std::pair<Mat, Mat>> sites;
  Vec delta(const std::string& key, const Vec& x, size_t out) const {
    auto it = sites.find(key);
    if (it == sites.end()) return Vec(out, 0.0);
    const auto& [A, B] = it->second;
    Vec ax(A.size(), 0.0), y(B.size(), 0.0);
    for (size_t r = 0; r < A.size(); ++r)
      for (size_t i = 0; i < x.size(); ++i) ax[r] += A[r][i] * x[i];
    for (size_t o = 0; o < B.size(); ++o)
      for (size_t r = 0; r < ax.size(); ++r) y[o] += B[o][r] * ax[r];
    return y;
  }
};

struct Ref {
  const GptWeights& w;
  const ModelConfig& c;
  double eps;

  Mat m(const std::string& name) const {  // a 2-D parameter as double rows
    at::Tensor t = w.get(name).to(at::kDouble).contiguous();
    Mat r(t.size(0), Vec(t.size(1)));
    auto a = t.accessor<double, 2>();
    for (int64_t i = 0; i < t.size(0); ++i)
      for (int64_t j = 0; j < t.size(1); ++j) r[i][j] = a[i][j];
    return r;
  }
  Vec v(const std::string& name) const {
    at::Tensor t = w.get(name).to(at::kDouble).contiguous().view({-1});
    Vec r(t.size(0));
    for (int64_t i = 0; i < t.size(0); ++i) r[i] = t[i].item<double>();
    return r;
  }
  static Vec rms(const Vec& x, double eps) {
    double ms = 0;
    for (double a : x) ms += a * a;
    ms /= double(x.size());
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + eps);
    return y;
  }
  static Vec matvec(const Mat& W, const Vec& x) {  // W [out, in]
    Vec y(W.size(), 0.0);
    for (size_t o = 0; o < W.size(); ++o)
      for (size_t i = 0; i < x.size(); ++i) y[o] += W[o][i] * x[i];
    return y;
  }
  static Vec scaled(Vec x, double s) {
    for (double& a : x) a *= s;
    return x;
  }

  // Sequence of T positions: residual stream as T vectors.
  using Seq = std::vector<Vec>;

  // One sequence: ids [T] -> NLL [T] of targets [T]; seg: segment id per position;
  // lora: this row's adapters (model/gpt.h lists the sites).
  Vec nll(const std::vector<int64_t>& ids, const std::vector<int64_t>& tgt, const std::vector<int64_t>& seg,
          const RefLora* lora = nullptr) const {
    const RefLora none;
    const RefLora& ad = lora ? *lora : none;
    auto plus = [](Vec a, const Vec& b) {
      for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
      return a;
    };
    const int T = int(ids.size()), d = c.model_dim, H = c.num_heads, KV = c.num_kv_heads, hd = c.head_dim();
    const int n_layers = c.num_layers;
    const bool proj = c.embed_dim() != d;
    Mat E = m("tok_emb.weight");
    Seq x(T), x0;
    for (int t = 0; t < T; ++t) {
      x[t] = rms(E[ids[t]], eps);
      if (proj) x[t] = matvec(m("embed_proj.weight"), x[t]);
    }
    x0 = x;

    // RoPE on the first r dims, pairs (p, p + r/2), inv_freq rounded to bf16.
    const int r = c.rope_dims > 0 ? c.rope_dims : hd, half = r / 2;
    Vec inv(half);
    for (int p = 0; p < half; ++p) inv[p] = at::BFloat16(1.0f / std::pow(float(c.rope_base), float(2 * p) / float(r)));
    auto rope = [&](Vec& hv, int t) {
      for (int p = 0; p < half; ++p) {
        const double ang = double(t) * inv[p], co = std::cos(ang), si = std::sin(ang);
        const double a = hv[p], b = hv[p + half];
        hv[p] = a * co + b * si;
        hv[p + half] = -a * si + b * co;
      }
    };
    auto ln = [&](int L) { return c.ln_scale ? 1.0 / std::sqrt(double(L + 1)) : 1.0; };

    // Attention of physical layer L (unrolled step st) on normed inputs nx -> outputs [T][d].
    auto attn = [&](int st, int L, const Seq& nx) {
      const std::string key = "step." + std::to_string(st) + ".";
      const std::string p = "blocks." + std::to_string(L) + ".";
      Vec qg = v(p + "attn.q_gain");
      Mat Wq = m(p + "attn.c_q.weight"), Wk = m(p + "attn.c_k.weight"), Wv = m(p + "attn.c_v.weight"),
          Wo = m(p + "attn.proj.weight");
      std::vector<std::vector<Vec>> q(T, std::vector<Vec>(H)), k(T, std::vector<Vec>(KV)), vv(T, std::vector<Vec>(KV));
      for (int t = 0; t < T; ++t) {
        Vec qa = plus(matvec(Wq, nx[t]), ad.delta(key + "q", nx[t], Wq.size()));
        Vec ka = plus(matvec(Wk, nx[t]), ad.delta(key + "k", nx[t], Wk.size()));
        Vec va = plus(matvec(Wv, nx[t]), ad.delta(key + "v", nx[t], Wv.size()));
        for (int h = 0; h < H; ++h) {
          q[t][h] = rms(Vec(qa.begin() + h * hd, qa.begin() + (h + 1) * hd), eps);
          rope(q[t][h], t);
          for (double& e : q[t][h]) e *= qg[h];
        }
        for (int h = 0; h < KV; ++h) {
          k[t][h] = rms(Vec(ka.begin() + h * hd, ka.begin() + (h + 1) * hd), eps);
          rope(k[t][h], t);
          vv[t][h] = Vec(va.begin() + h * hd, va.begin() + (h + 1) * hd);
        }
      }
      const int window = c.attn_windows.empty() ? 0 : c.attn_windows[L];
      const bool xsa = L >= n_layers - c.xsa_last_n;
      Seq out(T);
      for (int t = 0; t < T; ++t) {
        Vec y(d, 0.0);
        for (int h = 0; h < H; ++h) {
          const int g = h / (H / KV);
          Vec s;
          std::vector<int> keys;
          for (int u = 0; u <= t; ++u) {
            if (seg[u] != seg[t] || (window > 0 && t - u >= window)) continue;
            double dot = 0;
            for (int e = 0; e < hd; ++e) dot += q[t][h][e] * k[u][g][e];
            s.push_back(dot / std::sqrt(double(hd)));
            keys.push_back(u);
          }
          double mx = -1e300, z = 0;
          for (double a : s) mx = std::max(mx, a);
          for (double& a : s) z += (a = std::exp(a - mx));
          Vec yh(hd, 0.0);
          for (size_t n = 0; n < keys.size(); ++n)
            for (int e = 0; e < hd; ++e) yh[e] += s[n] / z * vv[keys[n]][g][e];
          if (xsa) {  // subtract the projection on the unit value vector of this position's group
            double nv = 0, dot = 0;
            for (int e = 0; e < hd; ++e) nv += vv[t][g][e] * vv[t][g][e];
            nv = std::max(std::sqrt(nv), 1e-12);
            for (int e = 0; e < hd; ++e) dot += yh[e] * vv[t][g][e] / nv;
            for (int e = 0; e < hd; ++e) yh[e] -= dot * vv[t][g][e] / nv;
          }
          for (int e = 0; e < hd; ++e) y[h * hd + e] = yh[e];
        }
        out[t] = plus(plus(matvec(Wo, y), ad.delta(key + "o", y, d)), ad.delta(key + "o_norm", nx[t], d));
      }
      return out;
    };
    auto mlp = [&](int st, int L, const Vec& nx) {
      const std::string p = "blocks." + std::to_string(L) + ".";
      Vec hdn = matvec(m(p + "mlp.fc.weight"), nx);
      for (double& a : hdn) {
        const double act = a > 0 ? a : (c.mlp_activation == "leaky_relu2" ? c.mlp_leaky_slope * a : 0.0);
        a = act * act;
      }
      return plus(matvec(m(p + "mlp.proj.weight"), hdn), ad.delta("step." + std::to_string(st) + ".mlp", nx, d));
    };
    // Block halves: attention with the x0 mix; MLP on its own input.
    auto attn_half = [&](int st, int L, const Seq& in) {
      const std::string p = "blocks." + std::to_string(L) + ".";
      Mat mix = m(p + "resid_mix");
      Vec as = v(p + "attn_scale");
      Seq xi(T), nx(T);
      for (int t = 0; t < T; ++t) {
        xi[t] = Vec(d);
        for (int i = 0; i < d; ++i) xi[t][i] = mix[0][i] * in[t][i] + mix[1][i] * x0[t][i];
        nx[t] = scaled(rms(xi[t], eps), ln(L));
      }
      Seq a = attn(st, L, nx);
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < d; ++i) xi[t][i] += as[i] * a[t][i];
      return xi;
    };
    auto mlp_half = [&](int st, int L, Seq in) {
      Vec ms = v("blocks." + std::to_string(L) + ".mlp_scale");
      for (int t = 0; t < T; ++t) {
        Vec mo = mlp(st, L, scaled(rms(in[t], eps), ln(L)));
        for (int i = 0; i < d; ++i) in[t][i] += ms[i] * mo[i];
      }
      return in;
    };

    // Layer sequence: 0..loop_start-1, (loop_start..loop_end) x (num_loops+1), loop_end+1..n-1.
    std::vector<int> seq;
    if (c.num_loops > 0) {
      for (int i = 0; i < c.loop_start; ++i) seq.push_back(i);
      for (int r2 = 0; r2 <= c.num_loops; ++r2)
        for (int i = c.loop_start; i <= c.loop_end; ++i) seq.push_back(i);
      for (int i = c.loop_end + 1; i < n_layers; ++i) seq.push_back(i);
    } else {
      for (int i = 0; i < n_layers; ++i) seq.push_back(i);
    }
    const int enc = int(seq.size()) / 2, dec = int(seq.size()) - enc, S = std::min(enc, dec);
    Mat sw = S > 0 ? m("skip_weights") : Mat{};
    Mat sg = S > 0 && c.skip_gates_enabled ? m("skip_gates") : Mat{};
    auto with_skip = [&](int j, Seq cur, const Seq& sk) {
      for (int t = 0; t < T; ++t)
        for (int e = 0; e < d; ++e) {
          const double s = sw[j][e] * sk[t][e];
          if (sg.empty()) {
            cur[t][e] += s;
          } else {
            const double g = 1.0 / (1.0 + std::exp(-sg[j][e]));
            cur[t][e] = s + g * (cur[t][e] - s);
          }
        }
      return cur;
    };
    std::vector<Seq> skips;
    for (int s = 0; s < enc; ++s) {
      x = mlp_half(s, seq[s], attn_half(s, seq[s], x));
      skips.push_back(x);
    }
    bool lanes = false;
    Seq l0, l1;
    for (int j = 0; j < dec; ++j) {
      const int L = seq[enc + j];
      const bool has_skip = j < S && !skips.empty();
      if (!lanes) {
        if (has_skip) { x = with_skip(j, x, skips.back()); skips.pop_back(); }
        if (c.parallel_start_layer > 0 && L >= c.parallel_start_layer) {
          lanes = true;
          l0 = attn_half(enc + j, L, x);
          l1 = mlp_half(enc + j, L, x);
        } else {
          x = mlp_half(enc + j, L, attn_half(enc + j, L, x));
        }
      } else {
        if (has_skip) { l0 = with_skip(j, l0, skips.back()); skips.pop_back(); }
        l0 = attn_half(enc + j, L, l0);
        l1 = mlp_half(enc + j, L, l1);
      }
    }
    if (lanes) {
      const double lam = w.get("lane_merge").to(at::kDouble).item<double>();
      for (int t = 0; t < T; ++t)
        for (int e = 0; e < d; ++e) x[t][e] = lam * l0[t][e] + (1 - lam) * l1[t][e];
    }
    Mat head = m(c.tie_embeddings ? "tok_emb.weight" : "lm_head.weight");
    Vec out(T);
    for (int t = 0; t < T; ++t) {
      Vec hfin = rms(x[t], eps);
      if (proj) hfin = matvec(m("head_proj.weight"), hfin);
      Vec logits = plus(matvec(head, hfin), ad.delta("head", hfin, head.size()));
      double mx = -1e300, z = 0;
      for (double& a : logits) {
        a = c.logit_softcap * std::tanh(a / c.logit_softcap);
        mx = std::max(mx, a);
      }
      for (double a : logits) z += std::exp(a - mx);
      out[t] = mx + std::log(z) - logits[tgt[t]];
    }
    return out;
  }
};

inline ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 37;
  c.num_layers = 3;
  c.model_dim = 16;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.mlp_mult = 2.0;
  c.logit_softcap = 5.0;  // small, so tanh is far from linear
  c.train_seq_len = 16;
  return c;
}

// Every frontier switch at once, small.
inline ModelConfig tiny_frontier_config() {
  ModelConfig c = tiny_config();
  c.num_layers = 5;
  c.embedding_dim = 8;
  c.mlp_mult = 1.5;
  c.mlp_activation = "leaky_relu2";
  c.rope_dims = 2;
  c.qk_gain_init = 5.0;
  c.xsa_last_n = 3;
  c.ln_scale = true;
  c.skip_gates_enabled = true;
  c.parallel_start_layer = 3;
  c.num_loops = 1;
  c.loop_start = 1;
  c.loop_end = 2;
  c.attn_windows = {0, 3, 0, 2, 0};
  return c;
}

// Reference init zeroes the output projections; perturb everything so every path counts.
inline GptWeights random_weights(const ModelConfig& c, uint64_t seed) {
  GptWeights w = init_gpt_weights(c, seed);
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);
  for (auto& [name, t] : w.tensors) t = (t + at::empty(t.sizes(), t.options()).normal_(0.0, 0.3, gen)).to(at::kDouble);
  return w;
}

}  // namespace pgolf::test
