// Every model file pgolf reads, recognised by content: pgolf checkpoints
// (.h5), parameter-golf torch.save state dicts (final_model.pt, banked or
// not), the baseline int8 + zlib artifact (final_model.int8.ptz, SPEC §7) and
// the frontier int6 + byte shuffle + brotli artifact (final_model.int6.ptz,
// SPEC §11), and pgolf's own artifacts (.pgz, quant/artifact.h: they carry
// their config). Nothing is executed: torch files go through the allow-listed
// pickle reader of quant/torch_archive.h.
//
// The reference's files carry no config. It is inferred from tensor names and
// shapes (vocab, layers, widths, heads from q_gain, KV heads, MLP width, tied
// or not, embedding projections, skip gates, lanes); what the weights cannot
// show (rope base, softcap, the frontier's XSA / loops / RoPE dims ...) comes
// from the family's preset, then --config / --config-from-log / --set.
#pragma once
#include <map>
#include <string>

#include "model/model_io.h"

namespace pgolf {

enum class ModelFileKind { Checkpoint, TorchStateDict, Int8Ptz, Int6Ptz, Artifact };  // Artifact: pgolf's .pgz
const char* model_file_kind_name(ModelFileKind k);
ModelFileKind detect_model_file(const std::string& path);

// Reference state-dict tensors (unbanked names, dequantized) of a torch file.
std::map<std::string, at::Tensor> read_reference_state(const std::string& path, ModelFileKind kind);
// The config implied by a state dict's names and shapes (see above). `notes`
// gets what had to be assumed.
ModelConfig infer_config(const std::map<std::string, at::Tensor>& state, const std::string& source,
                         std::string* notes = nullptr);

// Any of the above -> weights, checked against the (inferred, overridden) config.
GptWeights load_model_file(const ModelSource& src, std::string* notes = nullptr);

}  // namespace pgolf
