// Import check against the reference's own files and numbers. For every model
// file that scripts/ref_import_check.py wrote with the parameter-golf scripts'
// own code (state dict final_model.pt, baseline final_model.int8.ptz, frontier
// final_model.int6.ptz), loads it with pgolf's importer (load_model_file, the
// manifest's --set overrides), runs forward_nll on the same fixed batch and
// compares the per-token NLL with the reference forward's. One table row per
// file; exit 1 when any file is over its tolerance, 2 when one cannot be read.
//
//   pgolf_ref_import_check OUTDIR [--device auto|cpu|cuda] [--precision bf16|f32] [--no-sets]
//
// pgolf runs bf16 on CUDA and float32 on the CPU unless --precision says
// otherwise (bf16 on the CPU: an estimate of the bf16 error without a GPU).
// --no-sets ignores the manifest's overrides: the config then comes from the
// tensors and the family's preset alone (right for the reference's defaults).
// Built on demand: cmake --build BUILD --target pgolf_ref_import_check.
// scripts/gpu_ref_import.sh runs both halves on the GPU machine.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/error.h"
#include "model/pch.h"
#include "model/runtime.h"
#include "quant/model_files.h"

namespace {

using Json = nlohmann::json;

// Tolerances on |NLL_pgolf - NLL_ref| per token, in nats. Both sides compute
// the same function and differ only in rounding. NLL = logsumexp(z) - z_t, so
// |dNLL| <= 2 max_i |dz_i|; a relative disagreement r on the logits gives
// |dz| <= r |z|, with |z| < 30 under the soft cap (32 below) and typical
// |z| of a few units (6 below).
//  - bf16 (CUDA): matmul / attention inputs and outputs and the residual
//    stream are stored as bf16 (unit roundoff u = 2^-8), and the two
//    implementations round at nearly but not exactly the same points
//    (accumulation is float32 inside the kernels, negligible beside u): r ~ u,
//    max 2 * 2^-8 * 32 = 0.25, mean 2 * 2^-8 * 6 = 0.047 (0.05).
//  - f32 (CPU): nothing is stored below float32; what differs is the order of
//    the reductions (dot products over up to K = 2048 terms, softmax sums): a
//    relative error of about sqrt(K) * 2^-24, so r ~ 45 * 2^-24: max
//    2 * 45 * 2^-24 * 32 = 1.7e-4 (2e-4), mean 2 * 45 * 2^-24 * 6 = 3.2e-5 (3e-5).
// For scale, on the CPU: pgolf bf16 against the float32 reference (one side's
// whole bf16 error) measured mean 0.016-0.028, max 0.09-0.16; seeded config
// mistakes (XSA, ln_scale, parallel lanes, RoPE dims or base, no document
// mask) moved the NLL by mean 0.19-1.4, max 1.0-6.7 nats.
struct Tolerance {
  double max_abs, mean_abs;
};
constexpr Tolerance kBf16Tol{0.25, 0.05};
constexpr Tolerance kF32Tol{2e-4, 3e-5};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) pgolf::fail(path, "cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A raw little-endian array of `dtype` (int32 or float32) with the given shape.
at::Tensor read_raw(const std::string& path, at::ScalarType dtype, std::vector<int64_t> shape) {
  const std::string bytes = read_file(path);
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (int64_t(bytes.size()) != n * 4) pgolf::fail(path, "expected " + std::to_string(n * 4) + " bytes");
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

struct Row {
  std::string file, kind;
  double max_abs = NAN, mean_abs = NAN, ref_mean = NAN, pg_mean = NAN;
  std::string status;
};

struct Setup {
  bool cuda = false;
  bool use_sets = true;
  pgolf::Precision precision = pgolf::Precision::F32;
  Tolerance tol = kF32Tol;
};

Row check_one(const std::string& dir, const Json& e, const at::Tensor& tokens, int64_t bos, const Setup& s) {
  Row r;
  r.file = e.at("file").get<std::string>();
  pgolf::ModelSource src;
  src.path = dir + "/" + r.file;
  if (s.use_sets)
    for (const Json& set : e.value("sets", Json::array())) src.sets.push_back(set.get<std::string>());
  std::string notes;
  pgolf::GptWeights w = pgolf::load_model_file(src, &notes);
  r.kind = pgolf::model_file_kind_name(pgolf::detect_model_file(src.path));
  if (!notes.empty()) std::fprintf(stderr, "%s: %s\n", r.file.c_str(), notes.c_str());

  const int64_t B = tokens.size(0), T = tokens.size(1) - 1;
  const at::Tensor ref = read_raw(dir + "/" + e.at("nll").get<std::string>(), at::kFloat, {B, T}).to(at::kDouble);
  const at::Device dev = s.cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  for (auto& [name, t] : w.tensors) t = t.to(dev);
  const at::Tensor x = tokens.narrow(1, 0, T).to(dev), y = tokens.narrow(1, 1, T).to(dev);
  pgolf::ForwardOptions opt;
  opt.precision = s.precision;
  // The frontier's eval restricts attention to documents (varlen, BOS starts a segment).
  if (e.value("doc_mask", false)) opt.segment_ids = (x == bos).to(at::kLong).cumsum(1);
  at::Tensor nll;
  {
    c10::InferenceMode guard;
    nll = pgolf::forward_nll(w, x, y, opt).to(at::kCPU, at::kDouble);
  }
  const at::Tensor d = (nll - ref).abs();
  r.max_abs = d.max().item<double>();
  r.mean_abs = d.mean().item<double>();
  r.ref_mean = ref.mean().item<double>();
  r.pg_mean = nll.mean().item<double>();
  const bool ok = std::isfinite(r.max_abs) && r.max_abs <= s.tol.max_abs && r.mean_abs <= s.tol.mean_abs;
  r.status = ok ? "ok" : "OVER";
  return r;
}

Setup choose_setup(const Json& m, const std::string& device, const std::string& precision) {
  const pgolf::RuntimeInfo rt = pgolf::runtime_info();
  if (device != "auto" && device != "cpu" && device != "cuda") throw pgolf::Error("--device must be auto, cpu or cuda");
  if (device == "cuda" && !rt.cuda) throw pgolf::Error("--device cuda: no CUDA device is available");
  Setup s;
  s.cuda = device == "cuda" || (device == "auto" && rt.cuda);
  if (precision != "" && precision != "bf16" && precision != "f32") throw pgolf::Error("--precision must be bf16 or f32");
  const bool pg_bf16 = precision.empty() ? s.cuda : precision == "bf16";
  s.precision = pg_bf16 ? pgolf::Precision::BF16 : pgolf::Precision::F32;
  // bf16 on either side: the bf16 tolerance.
  const bool bf16 = pg_bf16 || m.value("ref_dtype", std::string("f32")) == "bf16";
  s.tol = bf16 ? kBf16Tol : kF32Tol;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: pgolf_ref_import_check OUTDIR [--device auto|cpu|cuda] [--precision bf16|f32] [--no-sets]\n";
  std::string dir, device = "auto", precision;
  bool bad = false, use_sets = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--precision" && i + 1 < argc) precision = argv[++i];
    else if (a == "--no-sets") use_sets = false;
    else if (a.rfind("--", 0) != 0 && dir.empty()) dir = a;
    else bad = true;
  }
  if (bad || dir.empty()) {
    std::fprintf(stderr, "%s", usage);
    return 2;
  }
  try {
    const Json m = Json::parse(read_file(dir + "/manifest.json"));
    const int64_t B = m.at("B").get<int64_t>(), T = m.at("T").get<int64_t>();
    const at::Tensor tokens = read_raw(dir + "/" + m.at("tokens").get<std::string>(), at::kInt, {B, T + 1}).to(at::kLong);
    Setup s = choose_setup(m, device, precision);
    s.use_sets = use_sets;
    const std::string pg = std::string(s.cuda ? "cuda " : "cpu ") + (s.precision == pgolf::Precision::BF16 ? "bf16" : "f32");
    std::printf("reference: %s %s%s (torch %s); pgolf: %s%s; batch %lld x %lld; tolerance max %.3g, mean %.3g nats\n",
                m.value("ref_device", std::string("?")).c_str(), m.value("ref_dtype", std::string("?")).c_str(),
                m.value("ref_compiled", false) ? " compiled" : "", m.value("torch", std::string("?")).c_str(), pg.c_str(),
                use_sets ? ", the run's --set overrides" : ", config from the tensors and the preset only",
                (long long)B, (long long)T, s.tol.max_abs, s.tol.mean_abs);
    if (m.contains("compile_error") && m["compile_error"].is_string())
      std::printf("note: the reference ran eagerly, torch.compile failed (%s)\n",
                  m["compile_error"].get<std::string>().c_str());
    std::printf("| file | kind | max abs dNLL | mean abs dNLL | mean NLL ref | mean NLL pgolf | |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    int rc = 0;
    for (const Json& e : m.at("entries")) {
      Row r;
      try {
        r = check_one(dir, e, tokens, m.value("bos_id", 1), s);
      } catch (const std::exception& ex) {
        r.file = e.value("file", std::string("?"));
        r.status = std::string("ERROR: ") + ex.what();
        rc = 2;
      }
      if (r.status == "OVER" && rc == 0) rc = 1;
      std::printf("| %s | %s | %.3g | %.3g | %.6f | %.6f | %s |\n", r.file.c_str(), r.kind.c_str(), r.max_abs,
                  r.mean_abs, r.ref_mean, r.pg_mean, r.status.c_str());
      std::fflush(stdout);
    }
    return rc;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "pgolf_ref_import_check: %s\n", ex.what());
    return 2;
  }
}
