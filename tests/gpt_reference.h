// An independent float64 restatement of the GPT forward with plain loops, for
// tests: the libtorch forward and everything built on it are checked against it.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "model/gpt.h"
#include "model/pch.h"

namespace pgolf::test {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // rows

// ---- the reference, restated with loops -------------------------------------
struct Ref {
  const GptWeights& w;
  const ModelConfig& c;
  double eps;

  Mat m(const std::string& name) const {  // a 2-D parameter as double rows
    at::Tensor t = w.get(name).to(at::kDouble).contiguous();
    Mat r(t.size(0), Vec(t.size(1)));
    for (int64_t i = 0; i < t.size(0); ++i)
      for (int64_t j = 0; j < t.size(1); ++j) r[i][j] = t[i][j].item<double>();
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

  // One sequence: ids [T] -> NLL [T] of targets [T]; seg: segment id per position.
  Vec nll(const std::vector<int64_t>& ids, const std::vector<int64_t>& tgt, const std::vector<int64_t>& seg) const {
    const int T = int(ids.size()), d = c.model_dim, H = c.num_heads, KV = c.num_kv_heads, hd = c.head_dim();
    Mat E = m("tok_emb.weight");
    std::vector<Vec> x(T), x0;
    for (int t = 0; t < T; ++t) x[t] = rms(E[ids[t]], eps);
    x0 = x;
    // RoPE: inv_freq rounded to bf16, as the module buffer is.
    const int half = hd / 2;
    Vec inv(half);
    for (int j = 0; j < half; ++j) {
      float f = 1.0f / std::pow(float(c.rope_base), float(2 * j) / float(hd));
      inv[j] = at::BFloat16(f);  // round to bf16
    }
    auto rope = [&](Vec& hvec, int t) {
      for (int j = 0; j < half; ++j) {
        double ang = double(t) * inv[j], co = std::cos(ang), si = std::sin(ang);
        double a = hvec[j], b = hvec[j + half];
        hvec[j] = a * co + b * si;
        hvec[j + half] = -a * si + b * co;
      }
    };
    auto run_block = [&](int L) {
      const std::string p = "blocks." + std::to_string(L) + ".";
      Mat mix = m(p + "resid_mix");
      Vec as = v(p + "attn_scale"), ms = v(p + "mlp_scale"), qg = v(p + "attn.q_gain");
      Mat Wq = m(p + "attn.c_q.weight"), Wk = m(p + "attn.c_k.weight"), Wv = m(p + "attn.c_v.weight"),
          Wo = m(p + "attn.proj.weight"), Wfc = m(p + "mlp.fc.weight"), Wpr = m(p + "mlp.proj.weight");
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < d; ++i) x[t][i] = mix[0][i] * x[t][i] + mix[1][i] * x0[t][i];
      // q, k, v per position and head
      std::vector<std::vector<Vec>> q(T, std::vector<Vec>(H)), k(T, std::vector<Vec>(KV)), vv(T, std::vector<Vec>(KV));
      for (int t = 0; t < T; ++t) {
        Vec n = rms(x[t], eps), qa = matvec(Wq, n), ka = matvec(Wk, n), va = matvec(Wv, n);
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
      std::vector<Vec> out(T, Vec(d, 0.0));
      for (int t = 0; t < T; ++t) {
        Vec y(d, 0.0);
        for (int h = 0; h < H; ++h) {
          const int g = h / (H / KV);
          Vec s;
          std::vector<int> keys;
          for (int u = 0; u <= t; ++u) {
            if (seg[u] != seg[t]) continue;
            double dot = 0;
            for (int e = 0; e < hd; ++e) dot += q[t][h][e] * k[u][g][e];
            s.push_back(dot / std::sqrt(double(hd)));
            keys.push_back(u);
          }
          double mx = -1e300, z = 0;
          for (double a : s) mx = std::max(mx, a);
          for (double& a : s) z += (a = std::exp(a - mx));
          for (size_t n = 0; n < keys.size(); ++n)
            for (int e = 0; e < hd; ++e) y[h * hd + e] += s[n] / z * vv[keys[n]][g][e];
        }
        Vec o = matvec(Wo, y);
        for (int i = 0; i < d; ++i) x[t][i] += as[i] * o[i];
        Vec hdn = matvec(Wfc, rms(x[t], eps));
        for (double& a : hdn) a = a > 0 ? a * a : 0.0;
        Vec mo = matvec(Wpr, hdn);
        for (int i = 0; i < d; ++i) x[t][i] += ms[i] * mo[i];
      }
    };
    const int enc = c.num_layers / 2, dec = c.num_layers - enc;
    std::vector<std::vector<Vec>> skips;
    Mat sw = std::min(enc, dec) > 0 ? m("skip_weights") : Mat{};
    for (int L = 0; L < enc; ++L) {
      run_block(L);
      skips.push_back(x);
    }
    for (int i = 0; i < dec; ++i) {
      if (!skips.empty()) {
        for (int t = 0; t < T; ++t)
          for (int e = 0; e < d; ++e) x[t][e] += sw[i][e] * skips.back()[t][e];
        skips.pop_back();
      }
      run_block(enc + i);
    }
    Vec out(T);
    for (int t = 0; t < T; ++t) {
      Vec logits = matvec(E, rms(x[t], eps));
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

// Reference init zeroes the output projections; perturb everything so every path counts.
inline GptWeights random_weights(const ModelConfig& c, uint64_t seed) {
  GptWeights w = init_gpt_weights(c, seed);
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);
  for (auto& [name, t] : w.tensors) t = (t + at::empty(t.sizes(), t.options()).normal_(0.0, 0.3, gen)).to(at::kDouble);
  return w;
}

}  // namespace pgolf::test
