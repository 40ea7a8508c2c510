// C interface to SentencePiece, implemented in a small shared module that
// pgolf loads with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece carries its own copy of protobuf-lite and
// exports it; libtorch loads the system libprotobuf. Linked into one process,
// the two copies resolve into each other and the process crashes before
// main(). Loaded locally with deep binding, SentencePiece keeps its copy to
// itself. Only plain C types cross this boundary.
#pragma once
#include <stddef.h>

extern "C" {

typedef struct pgolf_sp pgolf_sp;

enum { PGOLF_SP_NORMAL = 0, PGOLF_SP_CONTROL, PGOLF_SP_UNKNOWN, PGOLF_SP_UNUSED, PGOLF_SP_BYTE };

// Errors: functions that can fail return NULL / non-zero and write a message
// to err (always NUL-terminated, at most errlen bytes).
pgolf_sp* pgolf_sp_load(const char* model_bytes, size_t n, char* err, size_t errlen);
void pgolf_sp_free(pgolf_sp* sp);
int pgolf_sp_size(const pgolf_sp* sp);
int pgolf_sp_special_id(const pgolf_sp* sp, int which);  // 0 pad, 1 bos, 2 eos, 3 unk
const char* pgolf_sp_piece(const pgolf_sp* sp, int id, size_t* len);  // valid while sp lives
float pgolf_sp_score(const pgolf_sp* sp, int id);
int pgolf_sp_kind(const pgolf_sp* sp, int id);
// Results are malloc'd; the caller frees them with pgolf_sp_release.
int pgolf_sp_encode(const pgolf_sp* sp, const char* text, size_t n, int** ids, size_t* nids, char* err, size_t errlen);
int pgolf_sp_decode(const pgolf_sp* sp, const int* ids, size_t nids, char** text, size_t* n, char* err, size_t errlen);
// Trains from sentences pulled through next(ctx, &text, &len) until it returns 0.
typedef int (*pgolf_sp_next_fn)(void* ctx, const char** text, size_t* len);
int pgolf_sp_train(const char* const* keys, const char* const* values, size_t nkv, pgolf_sp_next_fn next, void* ctx,
                   char** model, size_t* model_len, char* err, size_t errlen);
void pgolf_sp_release(void* p);

}
