// pgolf artifact -> final_model.int6.ptz (quant/reference_export.h). No libtorch.
#include "quant/reference_export.h"

#include <brotli/encode.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <memory>
#include <set>

#include "data/error.h"
#include "quant/codec.h"
#include "quant/torch_archive_writer.h"

namespace pgolf::quant {

namespace {

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n;
  }
  return true;
}

std::string le_bytes(const std::vector<uint16_t>& v) {
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    out[2 * i] = static_cast<char>(v[i] & 0xFF);
    out[2 * i + 1] = static_cast<char>(v[i] >> 8);
  }
  return out;
}

}  // namespace

std::string int6_torch_save(const Artifact& a, const std::string& what, Int6ExportInfo* info) {
  Int6ExportInfo local;
  Int6ExportInfo& inf = info ? *info : local;
  inf = Int6ExportInfo{};
  // Keys of "w" must be unique once the suffixes are on.
  std::set<std::string> keys;
  auto claim = [&](const std::string& key, const std::string& tensor) {
    if (!keys.insert(key).second)
      fail(what, "tensor " + tensor + ": key '" + key + "' would appear twice in the reference layout's \"w\" dict");
  };
  for (const ArtifactTensor& t : a.tensors) {
    if (!valid_utf8(t.name)) fail(what, "a tensor name is not UTF-8 (the reference's pickle holds str keys)");
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      claim(t.name + ".q", t.name);
      claim(t.name + ".scale", t.name);
    } else {
      claim(t.name, t.name);
    }
  }
  const PyRef w = py_dict(), m = py_dict();
  // gptq_mixed_quantize: one str object per literal, so every passthrough
  // entry shares it; "gptq (int<b>)" is an f-string, a new object each time.
  const PyRef passthrough = py_str("passthrough (float16)");
  bool any_non_fp16_float = false;
  for (const ArtifactTensor& t : a.tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail(what, "tensor " + t.name + " has a negative dimension");
      numel *= d;
    }
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      // The reference stores q as int8 and scales as fp16, one per row.
      if (t.bits < 2 || t.bits > 8)
        fail(what, "tensor " + t.name + " is quantized to " + std::to_string(t.bits) +
                       " bits; the reference layout stores values as int8 (2..8 bits)");
      if (t.shape.empty()) fail(what, "quantized tensor " + t.name + " has no rows (the reference's scales are per row)");
      if (int64_t(t.values.size()) != numel || int64_t(t.scales.size()) != t.shape[0])
        fail(what, "quantized tensor " + t.name + ": value or scale count does not match its shape");
      const int8_t qmax = static_cast<int8_t>((1 << (t.bits - 1)) - 1);
      for (int8_t q : t.values)
        if (q < -qmax || q > qmax)
          fail(what, "quantized tensor " + t.name + " has a value outside int" + std::to_string(t.bits));
      std::string q(reinterpret_cast<const char*>(t.values.data()), t.values.size());
      dict_set(w, py_str(t.name + ".q"), py_tensor(DType::Int8, t.shape, std::move(q)));
      dict_set(w, py_str(t.name + ".scale"), py_tensor(DType::Float16, {t.shape[0]}, le_bytes(t.scales)));
      dict_set(m, py_str(t.name), py_str("gptq (int" + std::to_string(t.bits) + ")"));
      ++inf.quantized;
      inf.bits.push_back(t.bits);
    } else {
      DType dt;
      if (!dtype_from_name(t.dtype, &dt) || t.dtype != dtype_name(dt))
        fail(what, "tensor " + t.name + " has dtype '" + t.dtype + "', which torch.save cannot hold here");
      if (dtype_is_float(dt) && dt != DType::Float16) any_non_fp16_float = true;
      // result[name] and meta[name] use the same name object.
      const PyRef name = py_str(t.name);
      dict_set(w, name, py_tensor(dt, t.shape, t.data));
      dict_set(m, name, passthrough);
      ++inf.passthrough;
    }
  }
  if (any_non_fp16_float)
    inf.notes.push_back("some passthrough float tensors are not float16 (the reference stores fp16); they are "
                        "kept in their artifact dtype, which the reference's loader takes as stored");
  for (const ArtifactTensor& t : a.tensors)
    if (t.kind == ArtifactTensor::Kind::Quantized && t.method != "gptq") {
      inf.notes.push_back("tensors quantized by " + (t.method.empty() ? std::string("another method") : t.method) +
                          " are labelled \"gptq (int<bits>)\" like the rest (the reference's reader ignores the "
                          "label)");
      break;
    }
  // The reference's model keeps the embedding in bf16 (restore_fp32_params
  // widens only linears and control tensors), so it rounds tok_emb's
  // q * scale to bf16 where pgolf restores the original dtype.
  for (const ArtifactTensor& t : a.tensors) {
    if (t.name != "tok_emb.weight") continue;
    const nlohmann::json meta = nlohmann::json::parse(a.meta_json, nullptr, false);
    std::string orig = "float32";
    if (meta.is_object() && meta.contains("dtypes") && meta["dtypes"].is_object() &&
        meta["dtypes"].contains(t.name) && meta["dtypes"][t.name].is_string())
      orig = meta["dtypes"][t.name].get<std::string>();
    if (orig == "bfloat16" || (t.kind == ArtifactTensor::Kind::Raw && t.dtype == "bfloat16")) continue;
    inf.notes.push_back(
        "the reference loads tok_emb.weight into its bfloat16 embedding, so it sees this artifact's values rounded "
        "to bf16 (pgolf restores " + orig + ")" +
        (t.kind == ArtifactTensor::Kind::Quantized
             ? std::string(": expect a slightly different bpb there and in `pgolf eval` of the export, which "
                           "reads it the same way")
             : std::string()));
  }
  const PyRef root = py_dict();
  dict_set(root, py_str("w"), w);
  dict_set(root, py_str("m"), m);
  std::vector<const PyValue*> storages;
  inf.pickle_bytes = pickle_torch_object(root, &storages).size();
  std::string bytes = torch_save_bytes(root);
  inf.torch_save_bytes = bytes.size();
  return bytes;
}

std::string int6_compress(const std::string& torch_save) {
  // _compress: _byte_shuffle(data) (stride 2; the reference leaves inputs
  // shorter than the stride unshuffled, which a torch.save archive never is),
  // then brotli.compress(data, quality=11): lgwin 22, generic mode, through
  // the streaming encoder as the Python binding drives it.
  const std::string in = byte_shuffle(torch_save, 2);
  std::unique_ptr<BrotliEncoderState, void (*)(BrotliEncoderState*)> enc(
      BrotliEncoderCreateInstance(nullptr, nullptr, nullptr), BrotliEncoderDestroyInstance);
  if (!enc) throw Error("brotli: out of memory for the encoder");
  BrotliEncoderSetParameter(enc.get(), BROTLI_PARAM_MODE, BROTLI_MODE_GENERIC);
  BrotliEncoderSetParameter(enc.get(), BROTLI_PARAM_QUALITY, 11);
  BrotliEncoderSetParameter(enc.get(), BROTLI_PARAM_LGWIN, 22);
  BrotliEncoderSetParameter(enc.get(), BROTLI_PARAM_LGBLOCK, 0);
  std::string out;
  size_t avail_in = in.size();
  const uint8_t* next_in = reinterpret_cast<const uint8_t*>(in.data());
  uint8_t buf[1 << 16];
  while (true) {
    size_t avail_out = sizeof buf;
    uint8_t* next_out = buf;
    if (!BrotliEncoderCompressStream(enc.get(), BROTLI_OPERATION_FINISH, &avail_in, &next_in, &avail_out, &next_out,
                                     nullptr))
      throw Error("brotli: compression failed");
    out.append(reinterpret_cast<const char*>(buf), sizeof buf - avail_out);
    if (BrotliEncoderIsFinished(enc.get())) break;
  }
  return out;
}

std::string export_int6_ptz(const Artifact& a, const std::string& what, Int6ExportInfo* info) {
  Int6ExportInfo local;
  Int6ExportInfo& inf = info ? *info : local;
  std::string out = int6_compress(int6_torch_save(a, what, &inf));
  inf.file_bytes = out.size();
  return out;
}

}  // namespace pgolf::quant
