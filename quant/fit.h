// --fit: lower bit widths until the artifact fits its share of the cap.
//
// Each round encodes the artifact (entropy coding, fast; a fit or a miss by
// under 5% is coded again with the caller's coding, which can be a few percent
// smaller); while it is over `artifact_cap`, every
// report group (embed, looped, attn, mlp, other) with a quantized tensor
// above 2 bits is tried one bit lower (all its quantized tensors, each from
// its own width), scored by the increase of its Hessian-weighted error
// (quant/quantize.h: TensorResult::error) per byte saved, the bytes estimated
// from the order-0 entropy of the values before and after; the group with the
// smallest increase per byte is lowered. Trials are cached, so a group is
// re-quantized only when it changes width.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "quant/artifact.h"
#include "quant/quantize.h"

namespace pgolf::quant {

struct FitStep {
  std::string group;
  std::string bits;              // e.g. "6->5"
  double error_increase = 0;     // summed over the group's tensors
  double bytes_saved_estimate = 0;
  uint64_t artifact_bytes = 0;   // after the step
};

struct FitResult {
  std::vector<TensorPlan> plans;
  std::map<std::string, TensorResult> results;
  Artifact artifact;
  std::string bytes;  // encoded
  ArtifactLayout layout;
  std::vector<FitStep> steps;
  bool fits = false;
  double encode_seconds = 0, quantize_seconds = 0;
};

// Quantizes w (o.policy as the starting point) and lowers widths while the
// encoding is larger than artifact_cap (with fit = false: one encoding, no
// lowering).
FitResult quantize_to_fit(const GptWeights& w, const QuantizeOptions& o, const ArtifactWriteOptions& wo,
                          uint64_t artifact_cap, bool fit);

// Order-0 entropy of int8 values, in bits per value.
double value_entropy_bits(const at::Tensor& q);

}  // namespace pgolf::quant
