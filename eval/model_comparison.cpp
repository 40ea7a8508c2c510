#include "eval/model_comparison.h"

#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "data/byte_counter.h"
#include "data/document_index.h"
#include "data/error.h"
#include "data/token_stream.h"
#include "model/pch.h"
#include "quant/model_files.h"
#include "quant/quant_policy.h"

namespace pgolf {

namespace {

at::ScalarType act_type(Precision p) {
  return p == Precision::F64 ? at::kDouble : p == Precision::BF16 ? at::kBFloat16 : at::kFloat;
}
at::ScalarType math_type(Precision p) { return p == Precision::F64 ? at::kDouble : at::kFloat; }

std::string head_weight_name(const ModelConfig& cfg) { return cfg.tie_embeddings ? "tok_emb.weight" : "lm_head.weight"; }

// The softcapped logits [n, V] (math type) of head inputs h [n, E] (act type):
// what forward_nll feeds its cross-entropy (model/gpt.cpp, no head adapter).
at::Tensor head_logits(const GptWeights& w, const at::Tensor& h, Precision p) {
  at::Tensor z = at::linear(h, w.get(head_weight_name(w.config)).to(act_type(p))).to(math_type(p));
  const double cap = w.config.logit_softcap;
  return cap * at::tanh(z / cap);
}

// One model's forward over a batch: NLL [nb, L] (CPU, float64) and the LM
// head's input at the scored positions [n, E] (row-major order of the mask),
// taken from the forward's linear_input_tap.
struct BatchScores {
  at::Tensor nll, head_input;
};
BatchScores score_batch(const GptWeights& w, const at::Tensor& in, const at::Tensor& tg, ForwardOptions fo,
                        int64_t scored) {
  const std::string head = head_weight_name(w.config);
  BatchScores s;
  fo.linear_input_tap = [&](const std::string& name, const at::Tensor& x) {
    if (name == head) s.head_input = x;
  };
  s.nll = forward_nll(w, in, tg, fo).to(at::kCPU).to(at::kDouble);
  if (!s.head_input.defined() || s.head_input.size(0) != scored)
    throw Error("compare: the forward did not report its head input at the scored positions");
  return s;
}

std::string trimmed(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t,");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

double ComparisonResult::kl_quantile(double p) const {
  if (kl.empty()) return 0.0;
  std::vector<float> v = kl;
  const double pos = std::clamp(p, 0.0, 1.0) * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const double frac = pos - double(lo);
  std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(lo), v.end());
  const double a = v[lo];
  if (frac == 0 || lo + 1 >= v.size()) return a;
  const double b = *std::min_element(v.begin() + std::ptrdiff_t(lo) + 1, v.end());
  return a + frac * (b - a);
}

double ComparisonResult::delta_bpb_stderr() const {
  EvalResult d;
  d.nll_sum = model.nll_sum - reference.nll_sum;
  d.bytes = model.bytes;
  d.docs.resize(model.docs.size());
  for (size_t i = 0; i < model.docs.size(); ++i)
    d.docs[i] = {model.docs[i].nll - reference.docs[i].nll, model.docs[i].bytes, model.docs[i].targets};
  return d.bpb_stderr();
}

void ComparisonResult::add(const ComparisonResult& o) {
  model.add(o.model);
  reference.add(o.reference);
  kl_sum += o.kl_sum;
  kl_max = std::max(kl_max, o.kl_max);
  top1_agree += o.top1_agree;
  kl.insert(kl.end(), o.kl.begin(), o.kl.end());
}

void check_comparable(const GptWeights& model, const GptWeights& reference, const std::string& model_name,
                      const std::string& reference_name) {
  if (model.config.vocab_size != reference.config.vocab_size)
    fail(reference_name, "vocab_size " + std::to_string(reference.config.vocab_size) + " but " + model_name +
                             " has " + std::to_string(model.config.vocab_size) +
                             ": models compared must share a tokenizer");
}

std::vector<ComparisonResult> compare_models(const GptWeights& reference, const std::vector<const GptWeights*>& models,
                                             const TokenStream& stream, const ByteCounter& bc, const EvalOptions& o) {
  c10::NoGradGuard no_grad;
  for (const GptWeights* m : models) check_comparable(*m, reference, "the model", "compare: the reference");
  const std::vector<uint16_t> tok = stream.slice(0, stream.size());
  const WindowPlan plan = make_eval_plan(tok.size(), o);
  const auto [first, last] = rank_slice(plan, o.rank, o.world);
  const DocumentIndex docs(tok.data(), tok.size(), o.bos_id);
  if (bc.size() < size_t(reference.config.vocab_size))
    throw Error("compare: the byte tables cover " + std::to_string(bc.size()) + " ids, the models have " +
                std::to_string(reference.config.vocab_size));

  const size_t K = models.size();
  std::vector<ComparisonResult> out(K);
  uint64_t to_score = 0;
  for (size_t i = first; i < last; ++i) to_score += plan.windows[i].scored();
  for (ComparisonResult& r : out) {
    r.model.docs.resize(docs.size() + 1);  // + targets before the first BOS
    r.reference.docs.resize(docs.size() + 1);
    r.kl.reserve(to_score);
  }

  const int64_t L = o.seq_len, V = reference.config.vocab_size;
  const size_t per_batch = std::max<size_t>(1, size_t(o.batch_tokens / uint64_t(L)));
  const at::Device device = reference.get("tok_emb.weight").device();
  // Float64 log-probability rows per chunk (a few [chunk, V] tensors live at once).
  const int64_t chunk = std::max<int64_t>(1, (device.is_cuda() ? (int64_t(256) << 20) : (int64_t(16) << 20)) / (8 * V));
  uint64_t scored_so_far = 0;
  for (size_t b0 = first; b0 < last; b0 += per_batch) {
    const size_t nb = std::min(per_batch, last - b0);
    const WindowBatch wb = make_window_batch(plan.windows, b0, nb, tok, L);
    const int64_t n = wb.scored;
    ForwardOptions fo;
    fo.precision = o.precision;
    fo.score_mask = wb.mask.to(device);
    if (o.doc_mask) fo.segment_ids = (wb.inputs == int64_t(o.bos_id)).to(at::kLong).cumsum(1);  // on the host: no device wait
    const at::Tensor in_d = wb.inputs.to(device), tg_d = wb.targets.to(device);
    const BatchScores ref = score_batch(reference, in_d, tg_d, fo, n);
    std::vector<BatchScores> mod;
    for (const GptWeights* m : models) mod.push_back(score_batch(*m, in_d, tg_d, fo, n));

    // KL and top-1 per scored position, a chunk of rows at a time.
    std::vector<std::vector<at::Tensor>> kl_parts(K), agree_parts(K);
    for (int64_t r = 0; r < n; r += chunk) {
      const int64_t m = std::min(chunk, n - r);
      const at::Tensor zr = head_logits(reference, ref.head_input.narrow(0, r, m), o.precision);
      const at::Tensor lr = at::log_softmax(zr.to(at::kDouble), -1);
      const at::Tensor pr = lr.exp();
      const at::Tensor ar = zr.argmax(-1);
      for (size_t i = 0; i < K; ++i) {
        const at::Tensor zm = head_logits(*models[i], mod[i].head_input.narrow(0, r, m), o.precision);
        const at::Tensor lm = at::log_softmax(zm.to(at::kDouble), -1);
        kl_parts[i].push_back((pr * (lr - lm)).sum(-1).to(at::kCPU));
        agree_parts[i].push_back((zm.argmax(-1) == ar).to(at::kCPU));
      }
    }
    std::vector<at::Tensor> kl(K), agree(K);
    for (size_t i = 0; i < K; ++i) {
      kl[i] = n ? at::cat(kl_parts[i]).contiguous() : at::zeros({0}, at::kDouble);
      agree[i] = n ? at::cat(agree_parts[i]).contiguous() : at::zeros({0}, at::kBool);
    }

    // Row-major [nb, L] NLL of the reference and of each model; per-row KL / agreement of each model.
    const at::Tensor ref_nll = ref.nll.contiguous();
    const double* pref = ref_nll.data_ptr<double>();
    std::vector<const double*> pmod(K), pkl(K);
    std::vector<const bool*> pagree(K);
    for (size_t i = 0; i < K; ++i) {
      mod[i].nll = mod[i].nll.contiguous();
      pmod[i] = mod[i].nll.data_ptr<double>();
      pkl[i] = kl[i].data_ptr<double>();
      pagree[i] = agree[i].data_ptr<bool>();
    }
    int64_t row = 0;
    for (size_t k = 0; k < nb; ++k) {
      const Window& win = plan.windows[b0 + k];
      for (uint32_t j = win.score_from; j < win.len; ++j, ++row) {
        const uint64_t t = win.start + j;  // predicts tok[t + 1] after tok[t]
        const uint32_t nbytes = bc.bytes(tok[t], tok[t + 1]);
        const size_t d = docs.doc_at(t), di = d == SIZE_MAX ? docs.size() : d;
        const int64_t at_kj = int64_t(k) * L + j;
        for (size_t i = 0; i < K; ++i) {
          ComparisonResult& c = out[i];
          c.reference.count(pref[at_kj], nbytes, di);
          c.model.count(pmod[i][at_kj], nbytes, di);
          const double v = pkl[i][row];
          c.kl_sum += v;
          c.kl_max = std::max(c.kl_max, v);
          c.kl.push_back(float(v));
          c.top1_agree += pagree[i][row];
        }
      }
      for (ComparisonResult& c : out) {
        c.model.tokens_in += win.len;
        c.reference.tokens_in += win.len;
      }
    }
    for (ComparisonResult& c : out) {
      c.model.windows += nb;
      c.reference.windows += nb;
    }
    scored_so_far += uint64_t(n);
    if (o.progress) o.progress(scored_so_far, to_score);
  }
  return out;
}

std::vector<ClassSubstitution> per_class_substitutions(const GptWeights& model, const GptWeights& reference,
                                                       const std::string& model_name,
                                                       const std::string& reference_name) {
  check_comparable(model, reference, model_name, reference_name);
  const std::string a = model.config.to_json(), b = reference.config.to_json();
  if (a != b) {
    std::istringstream sa(a), sb(b);
    std::string la, lb;
    while (std::getline(sa, la) && std::getline(sb, lb) && la == lb) {
    }
    fail(reference_name, "config differs from " + model_name + "'s (" + trimmed(lb) + " against " + trimmed(la) +
                             "): --per-class swaps tensors between models of one config");
  }
  std::vector<ClassSubstitution> out;
  for (const char* g : {"embed", "looped", "attn", "mlp", "other"}) {
    ClassSubstitution s;
    s.group = g;
    s.weights = reference;  // tensors shared
    for (const auto& [name, t] : reference.tensors) {
      if (quant::report_group(name, reference.config) != g) continue;
      auto it = model.tensors.find(name);
      if (it == model.tensors.end()) fail(model_name, "has no tensor " + name);
      const at::Tensor& mt = it->second;
      if (mt.sizes() != t.sizes()) fail(model_name, "tensor " + name + " has another shape than the reference's");
      s.tensors.push_back(name);
      s.params += uint64_t(t.numel());
      const bool same = mt.scalar_type() == t.scalar_type() ? at::equal(mt, t) : at::equal(mt.to(at::kDouble), t.to(at::kDouble));
      s.changed += !same;
      s.weights.tensors[name] = mt;
    }
    if (!s.tensors.empty()) out.push_back(std::move(s));
  }
  return out;
}

namespace {

nlohmann::json comparison_json(const ComparisonResult& c) {
  return {{"bpb", c.model.bpb()},
          {"bpb_reference", c.reference.bpb()},
          {"delta_bpb", c.delta_bpb()},
          {"delta_bpb_stderr", c.delta_bpb_stderr()},
          {"kl_mean", c.kl_mean()},
          {"kl_median", c.kl_quantile(0.5)},
          {"kl_p99", c.kl_quantile(0.99)},
          {"kl_max", c.kl_max},
          {"top1_agreement", c.top1_agreement()}};
}

}  // namespace

void run_model_comparison(const CompareCommand& cmd, const GptWeights& model, const ModelSource& reference_source,
                          const Tokenizer& tok, const TokenStream& stream, const ByteCounter& bc,
                          const ScoringDevice& dev, const EvalOptions& o) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  std::string notes;
  GptWeights ref = load_model_file(reference_source, &notes);
  if (!notes.empty() && !cmd.quiet) std::fprintf(stderr, "%s: %s\n", reference_source.path.c_str(), notes.c_str());
  check_comparable(model, ref, cmd.model_path, reference_source.path);
  check_model_tokenizer(tok, cmd.tokenizer_path, ref);
  place_weights(ref, dev);
  std::vector<ClassSubstitution> classes;
  if (cmd.per_class) classes = per_class_substitutions(model, ref, cmd.model_path, reference_source.path);
  std::vector<const GptWeights*> models{&model};
  for (const ClassSubstitution& s : classes) models.push_back(&s.weights);

  const auto e0 = clock::now();
  const std::vector<ComparisonResult> rs = compare_models(ref, models, stream, bc, o);
  const double eval_s = std::chrono::duration<double>(clock::now() - e0).count();
  const double wall = std::chrono::duration<double>(clock::now() - t0).count();
  const ComparisonResult& c = rs[0];

  const char* plan = plan_kind_name(o.plan);
  std::fprintf(stderr, "%-10s %s (L=%u%s%s), %s, %s\n", "eval", plan, o.seq_len,
               o.stride ? (", S=" + std::to_string(o.stride)).c_str() : "", o.doc_mask ? ", doc-mask" : "",
               dev.cuda ? dev.device_name.c_str() : "cpu", dev.precision_name.c_str());
  std::fprintf(stderr, "%-10s %s against %s (reference), on the same targets\n", "compare", cmd.model_path.c_str(),
               reference_source.path.c_str());
  const size_t ndocs = c.model.docs.size() - (c.model.docs.back().targets ? 0 : 1);
  std::fprintf(stderr, "%-10s %.6f ± %.6f model, %.6f ± %.6f reference\n", "bpb", c.model.bpb(), c.model.bpb_stderr(),
               c.reference.bpb(), c.reference.bpb_stderr());
  // "%-11s": the Δ is two bytes.
  std::fprintf(stderr, "%-11s %+.6f ± %.6f (paired stderr over %zu documents)\n", "Δbpb", c.delta_bpb(),
               c.delta_bpb_stderr(), ndocs);
  std::fprintf(stderr, "%-10s mean %.6g, median %.6g, p99 %.6g, max %.6g nats/target (KL(reference || model))\n",
               "KL", c.kl_mean(), c.kl_quantile(0.5), c.kl_quantile(0.99), c.kl_max);
  std::fprintf(stderr, "%-10s %.4f%% of targets: the same argmax token\n", "top-1", 100.0 * c.top1_agreement());
  std::fprintf(stderr, "%-10s %s\n%-10s %s\n%-10s %s\n", "targets", with_commas(c.model.targets).c_str(), "bytes",
               with_commas(c.model.bytes).c_str(), "windows", with_commas(c.model.windows).c_str());
  std::fprintf(stderr, "%-10s %s scored targets/s (%zu compared + the reference; %.2f s eval, %.2f s wall)\n", "speed",
               with_commas(uint64_t(double(c.model.targets) / std::max(eval_s, 1e-9))).c_str(), models.size(), eval_s,
               wall);
  if (!classes.empty()) {
    std::fprintf(stderr, "\nper class: the reference with one group's tensors from the model\n");
    std::fprintf(stderr, "%-8s %8s %8s %13s %10s %11s %10s %10s %9s\n", "class", "tensors", "changed", "params", "bpb",
                 "Δbpb", "KL mean", "KL p99", "top-1");
    auto row = [](const std::string& name, size_t tensors, size_t changed, uint64_t params, const ComparisonResult& r) {
      std::fprintf(stderr, "%-8s %8zu %8zu %13s %10.6f %+10.6f %10.4g %10.4g %8.4f%%\n", name.c_str(), tensors, changed,
                   with_commas(params).c_str(), r.model.bpb(), r.delta_bpb(), r.kl_mean(), r.kl_quantile(0.99),
                   100.0 * r.top1_agreement());
    };
    size_t tensors = 0, changed = 0;
    uint64_t params = 0;
    for (size_t i = 0; i < classes.size(); ++i) {
      row(classes[i].group, classes[i].tensors.size(), classes[i].changed, classes[i].params, rs[i + 1]);
      tensors += classes[i].tensors.size();
      changed += classes[i].changed;
      params += classes[i].params;
    }
    row("all", tensors, changed, params, c);
  }
  if (cmd.json) {
    nlohmann::json j = comparison_json(c);
    j.update({{"bpb_stderr", c.model.bpb_stderr()},
              {"bpb_reference_stderr", c.reference.bpb_stderr()},
              {"loss", c.model.loss()},
              {"loss_reference", c.reference.loss()},
              {"targets", c.model.targets},
              {"bytes", c.model.bytes},
              {"windows", c.model.windows},
              {"seconds", wall},
              {"eval_seconds", eval_s},
              {"plan", plan},
              {"seq_len", o.seq_len},
              {"stride", o.stride},
              {"doc_mask", o.doc_mask},
              {"device", dev.cuda ? dev.device_name : "cpu"},
              {"precision", dev.precision_name},
              {"model", cmd.model_path},
              {"reference", reference_source.path}});
    if (cmd.per_class) {
      nlohmann::json rows = nlohmann::json::array();
      for (size_t i = 0; i < classes.size(); ++i) {
        nlohmann::json r = comparison_json(rs[i + 1]);
        r.update({{"class", classes[i].group},
                  {"tensors", classes[i].tensors.size()},
                  {"changed", classes[i].changed},
                  {"params", classes[i].params}});
        rows.push_back(r);
      }
      j["per_class"] = rows;
    }
    std::printf("%s\n", j.dump().c_str());
  }
}

}  // namespace pgolf
