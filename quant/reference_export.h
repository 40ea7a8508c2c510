// A pgolf artifact -> the reference's final_model.int6.ptz (SPEC §11), so a
// pgolf-quantized model can be checked with the 2026-04-10_VarLenAttn
// scripts. docs/ARTIFACT_FORMAT.md ("Export to the reference's int6.ptz")
// states the layout; `pgolf export` is the command.
//
// What the reference writes (serialize -> gptq_mixed_quantize, torch.save,
// _compress) and reads (deserialize -> _decompress, torch.load,
// dequantize_mixed):
//   brotli(quality 11, lgwin 22)( "BSHF" 0x02 byte_shuffle(
//     torch.save({"w": tensors, "m": meta}) ) )
//   quantized tensor N: w["N.q"] int8 [shape], w["N.scale"] fp16 [rows],
//                       m["N"] = "gptq (int<bits>)"
//   anything else:      w["N"] the tensor, m["N"] = "passthrough (float16)"
// and dequantizes q.float() * scale.float()[row] cast to its own model's
// dtype for N (bfloat16 for tok_emb.weight, float32 otherwise); fp16
// passthrough tensors are cast to that dtype, others are taken as stored.
//
// The export writes each quantized tensor's values (int8 holds every width
// pgolf writes, 2..8 bits) and its fp16 scale bit patterns unchanged, and
// raw tensors in their stored dtype (pgolf stores small floats as fp16, as
// the reference does). So the reference's dequantization reproduces
// pgolf's: the same float32 product q * scale, rounded once to the
// reference model's dtype. Entries follow the artifact's tensor order; the
// pickle shares strings the way the reference's dicts do (a passthrough
// tensor's name is one object in "w" and "m", "passthrough (float16)" is one
// object), so the bytes are what torch.save writes for those dicts.
//
// The file carries no config (as the reference's does not): the reference
// script must run with hyperparameters matching the artifact's config.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/artifact.h"

namespace pgolf::quant {

struct Int6ExportInfo {
  int quantized = 0;       // tensors stored as .q + .scale
  int passthrough = 0;     // tensors stored as they are
  std::vector<int> bits;   // per quantized tensor, in order
  std::vector<std::string> notes;  // what differs from a file the reference itself would write
  uint64_t pickle_bytes = 0, torch_save_bytes = 0, file_bytes = 0;
};

// The torch.save archive of {"w", "m"} (before byte shuffle and brotli).
// Refuses, naming `what` and the tensor, what the layout cannot hold:
// quantized widths above 8 bits, dtypes torch has no storage for, names
// that are not UTF-8 or that collide once ".q" / ".scale" are appended.
std::string int6_torch_save(const Artifact& a, const std::string& what, Int6ExportInfo* info = nullptr);

// _compress: byte shuffle (stride 2, "BSHF" header) then brotli quality 11,
// window 2^22, generic mode -- Python's brotli.compress(data, quality=11).
std::string int6_compress(const std::string& torch_save);

// Both: the bytes of final_model.int6.ptz.
std::string export_int6_ptz(const Artifact& a, const std::string& what, Int6ExportInfo* info = nullptr);

}  // namespace pgolf::quant
