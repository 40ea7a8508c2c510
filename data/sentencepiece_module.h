// Finds and loads the SentencePiece module (see data/sentencepiece_shim.h).
#pragma once
#include "data/sentencepiece_shim.h"

namespace pgolf {

struct SentencePieceModule {
  decltype(&pgolf_sp_load) load;
  decltype(&pgolf_sp_free) free;
  decltype(&pgolf_sp_size) size;
  decltype(&pgolf_sp_special_id) special_id;
  decltype(&pgolf_sp_piece) piece;
  decltype(&pgolf_sp_score) score;
  decltype(&pgolf_sp_kind) kind;
  decltype(&pgolf_sp_encode) encode;
  decltype(&pgolf_sp_decode) decode;
  decltype(&pgolf_sp_train) train;
  decltype(&pgolf_sp_release) release;
};

// Loaded once per process. Looks at $PGOLF_SENTENCEPIECE_MODULE, then next to
// the running executable, then where the build put it.
const SentencePieceModule& sentencepiece_module();

}  // namespace pgolf
