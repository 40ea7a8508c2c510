// Export to the reference's int6.ptz (quant/reference_export.h) and the
// torch.save writer under it (quant/torch_archive_writer.h). The CLI side,
// with CPython's pickler as the judge of data.pkl, is tests/export_cli.sh.
#include <gtest/gtest.h>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <set>

#include "data/atomic_file.h"
#include "data/error.h"
#include "data/sha256.h"
#include "quant/codec.h"
#include "quant/model_files.h"
#include "quant/quantize.h"
#include "quant/reference_export.h"
#include "quant/torch_archive.h"
#include "quant/torch_archive_writer.h"
#include "tests/gpt_reference.h"
#include "tests/test_util.h"

namespace pgolf::test {
namespace {

using quant::PyRef;

std::string from_hex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), size_t(c.numel()) * c.element_size());
}

uint32_t le32_at(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) | uint32_t(uint8_t(s[at + 1])) << 8 | uint32_t(uint8_t(s[at + 2])) << 16 |
         uint32_t(uint8_t(s[at + 3])) << 24;
}
uint16_t le16_at(const std::string& s, size_t at) { return uint16_t(uint8_t(s[at]) | uint8_t(s[at + 1]) << 8); }

// Walks a protocol-2 pickle: the GLOBALs it names and the opcodes it uses.
// Any opcode outside what the writer should emit is reported in `error`.
struct PickleScan {
  std::vector<std::string> globals;
  std::set<unsigned char> opcodes;
  std::string error;
};
PickleScan scan_pickle(const std::string& p) {
  PickleScan s;
  size_t i = 0;
  auto skip = [&](size_t n) {
    if (i + n > p.size()) s.error = "truncated";
    i += n;
  };
  while (i < p.size() && s.error.empty()) {
    const unsigned char op = static_cast<unsigned char>(p[i++]);
    s.opcodes.insert(op);
    switch (op) {
      case 0x80: case 'q': case 'h': case 'K': skip(1); break;       // PROTO, BINPUT, BINGET, BININT1
      case 'M': skip(2); break;                                        // BININT2
      case 'r': case 'j': case 'J': skip(4); break;                    // LONG_BINPUT, LONG_BINGET, BININT
      case 'X': {                                                       // BINUNICODE
        if (i + 4 > p.size()) return s.error = "truncated", s;
        const uint32_t n = le32_at(p, i);
        skip(4 + size_t(n));
        break;
      }
      case 0x8a: if (i < p.size()) skip(1 + uint8_t(p[i])); break;     // LONG1
      case 'c': {                                                       // GLOBAL
        const size_t a = p.find('\n', i), b = a == std::string::npos ? a : p.find('\n', a + 1);
        if (b == std::string::npos) return s.error = "bad GLOBAL", s;
        s.globals.push_back(p.substr(i, a - i) + "." + p.substr(a + 1, b - a - 1));
        i = b + 1;
        break;
      }
      case '}': case '(': case 's': case 'u': case 't': case ')': case 0x85: case 0x86: case 0x87:
      case 'R': case 'Q': case 0x88: case 0x89: case 'N':
        break;
      case '.':
        if (i != p.size()) s.error = "STOP before the end";
        return s;
      default:
        s.error = "unexpected opcode " + std::to_string(op);
        return s;
    }
  }
  if (s.error.empty()) s.error = "no STOP";
  return s;
}

// The artifact of a model quantized with the reference's defaults (int6
// matrices, int8 tok_emb, small floats fp16), tiny enough that matrices
// count as large.
quant::Artifact quantized(const GptWeights& w) {
  quant::QuantizeOptions o;
  o.method = "rtn";
  o.policy.passthrough_max_numel = 100;
  return quant::quantize_model(w, o);
}

// ---- the torch.save writer -------------------------------------------------------------

// data.pkl of a small state-dict-like object, against what CPython 3.11's
// pickler writes for the same objects through torch.save's persistent_id and
// Tensor.__reduce_ex__ (generated with tests/export_check.py's stand-ins):
// memo hits for the shared name "b", the shared "passthrough (float16)", the
// 'storage' and 'cpu' constants and the globals; 0-d and 4-d shapes.
TEST(TorchSave, PickleIsWhatCPythonWrites) {
  const PyRef w = quant::py_dict(), m = quant::py_dict(), root = quant::py_dict();
  const PyRef pass = quant::py_str("passthrough (float16)"), b = quant::py_str("b"), c = quant::py_str("c"),
              d = quant::py_str("dd");
  quant::dict_set(w, quant::py_str("aa.q"), quant::py_tensor(quant::DType::Int8, {2, 3}, std::string(6, '\1')));
  quant::dict_set(w, quant::py_str("aa.scale"), quant::py_tensor(quant::DType::Float16, {2}, std::string(4, '\0')));
  quant::dict_set(w, b, quant::py_tensor(quant::DType::Float16, {4}, std::string(8, '\0')));
  quant::dict_set(w, c, quant::py_tensor(quant::DType::Float32, {}, std::string(4, '\0')));
  quant::dict_set(w, d, quant::py_tensor(quant::DType::Bool, {1, 1, 1, 1}, std::string(1, '\1')));
  quant::dict_set(m, quant::py_str("aa"), quant::py_str("gptq (int6)"));
  quant::dict_set(m, b, pass);
  quant::dict_set(m, c, pass);
  quant::dict_set(m, d, pass);
  quant::dict_set(root, quant::py_str("w"), w);
  quant::dict_set(root, quant::py_str("m"), m);
  const std::string cpython = from_hex(
      "80027d71002858010000007771017d710228580400000061612e71710363746f7263682e5f7574696c730a5f72656275696c645f74656e"
      "736f725f76320a71042828580700000073746f72616765710563746f7263680a4368617253746f726167650a710658010000003071075803"
      "00000063707571084b06747109514b004b024b0386710a4b034b0186710b8963636f6c6c656374696f6e730a4f72646572656444696374"
      "0a710c2952710d74710e52710f580800000061612e7363616c65711068042828680563746f7263680a48616c6653746f726167650a711158"
      "0100000031711268084b02747113514b004b028571144b0185711589680c2952711674711752711858010000006271196804282868056811"
      "580100000032711a68084b0474711b514b004b0485711c4b0185711d89680c2952711e74711f527120580100000063712168042828680563"
      "746f7263680a466c6f617453746f726167650a7122580100000033712368084b01747124514b00292989680c2952712574712652712758"
      "020000006464712868042828680563746f7263680a426f6f6c53746f726167650a7129580100000034712a68084b0174712b514b00284b01"
      "4b014b014b0174712c284b014b014b014b0174712d89680c2952712e74712f5271307558010000006d71317d71322858020000006161713358"
      "0b000000677074712028696e743629713468195815000000706173737468726f7567682028666c6f61743136297135682168356828683575"
      "752e");
  std::vector<const quant::PyValue*> storages;
  EXPECT_EQ(quant::pickle_torch_object(root, &storages), cpython);
  ASSERT_EQ(storages.size(), 5u);
  EXPECT_EQ(storages[4]->dtype, quant::DType::Bool);
}

// Integer opcodes by size and dict batching, against CPython's pickle.dumps
// (protocol 2) of {"x": s, "y": s, "z": (1, 300, 70000, 2**40, -1)} with one
// shared str s.
TEST(TorchSave, IntsTuplesAndSharedStrings) {
  const PyRef root = quant::py_dict(), s = quant::py_str("s");
  quant::dict_set(root, quant::py_str("x"), s);
  quant::dict_set(root, quant::py_str("y"), s);
  quant::dict_set(root, quant::py_str("z"),
                  quant::py_tuple({quant::py_int(1), quant::py_int(300), quant::py_int(70000),
                                   quant::py_int(int64_t(1) << 40), quant::py_int(-1)}));
  const std::string cpython = from_hex(
      "80027d710028580100000078710158010000007371025801000000797103680258010000007a7104284b014d2c014a701101008a06"
      "0000000000014affffffff747105752e");
  const std::string got = quant::pickle_torch_object(root, nullptr);
  EXPECT_EQ(got, cpython);
  EXPECT_EQ(scan_pickle(got).error, "");
}

// Dict batches (CPython's batch_dict_exact): one entry is SETITEM; 1000
// entries end with an empty MARK SETITEMS; the 1001st starts a new batch;
// memo indices past 255 use LONG_BINPUT. SHA-256 of CPython's pickle.dumps
// of {"k0": 0, ..., "k999": 999} (and of 1001 entries), protocol 2.
TEST(TorchSave, DictBatchesAndLongMemoIndices) {
  const PyRef one = quant::py_dict(), inner = quant::py_dict();
  quant::dict_set(inner, quant::py_str("a"), quant::py_none());
  quant::dict_set(one, quant::py_str("one"), inner);
  EXPECT_EQ(quant::pickle_torch_object(one, nullptr),
            from_hex("80027d710058030000006f6e6571017d710258010000006171034e73732e"));
  for (int n : {1000, 1001}) {
    const PyRef d = quant::py_dict();
    for (int i = 0; i < n; ++i) quant::dict_set(d, quant::py_str("k" + std::to_string(i)), quant::py_int(i));
    const std::string p = quant::pickle_torch_object(d, nullptr);
    EXPECT_EQ(Sha256::hex(p.data(), p.size()),
              n == 1000 ? "4c419e623f3fffbd83f3105c3e637c5d364e83796364ba8fdf43e8de56c633b8"
                        : "5f7e312181dee612c435874e4e1ef89726cbb39d7b4eb2e9ac96adeab46e9b53")
        << n;
  }
}

TEST(TorchSave, ArchiveHasTorchsRecordsAlignmentAndEndRecords) {
  const at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3}), b = at::tensor({1, -2, 3}, at::kChar);
  const PyRef root = quant::py_dict();
  quant::dict_set(root, quant::py_str("a"), quant::py_tensor(quant::DType::Float32, {2, 3}, tensor_bytes(a)));
  quant::dict_set(root, quant::py_str("b"), quant::py_tensor(quant::DType::Int8, {3}, tensor_bytes(b)));
  quant::dict_set(root, quant::py_str("note"), quant::py_str("hello"));
  const std::string bytes = quant::torch_save_bytes(root);
  EXPECT_EQ(bytes, quant::torch_save_bytes(root));  // deterministic: no time stamps, no random id

  quant::ZipReader z(bytes, "mem");
  std::vector<std::string> names;
  for (const quant::ZipEntry& e : z.entries()) {
    names.push_back(e.name);
    EXPECT_EQ(e.method, 0) << e.name;
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
  }
  const std::vector<std::string> want = {"archive/data.pkl",  "archive/.format_version", "archive/.storage_alignment",
                                         "archive/byteorder", "archive/data/0",          "archive/data/1",
                                         "archive/version",   "archive/.data/serialization_id"};
  EXPECT_EQ(names, want);
  std::string scratch;
  EXPECT_EQ(z.read(*z.find("archive/.format_version"), &scratch, 100), "1");
  EXPECT_EQ(z.read(*z.find("archive/.storage_alignment"), &scratch, 100), "64");
  EXPECT_EQ(z.read(*z.find("archive/byteorder"), &scratch, 100), "little");
  EXPECT_EQ(z.read(*z.find("archive/version"), &scratch, 100), "3\n");
  const std::string sid(z.read(*z.find("archive/.data/serialization_id"), &scratch, 100));
  EXPECT_EQ(sid.size(), 40u);
  EXPECT_EQ(sid.find_first_not_of("0123456789"), std::string::npos);
  // The first local header, by hand.
  EXPECT_EQ(le32_at(bytes, 0), 0x04034b50u);
  EXPECT_EQ(le16_at(bytes, 4), 0);       // version needed
  EXPECT_EQ(le16_at(bytes, 6), 0x0808);  // data descriptor + UTF-8
  EXPECT_EQ(le32_at(bytes, 10), 0u);     // DOS time and date
  const size_t nlen = le16_at(bytes, 26), xlen = le16_at(bytes, 28);
  EXPECT_EQ(bytes.substr(30, nlen), "archive/data.pkl");
  EXPECT_EQ(bytes.substr(30 + nlen, 2), "FB");
  EXPECT_EQ(le16_at(bytes, 32 + nlen), xlen - 4);
  EXPECT_EQ(bytes.substr(34 + nlen, xlen - 4), std::string(xlen - 4, 'Z'));
  // ZIP64 end record, its locator, the end record.
  EXPECT_EQ(le32_at(bytes, bytes.size() - 22), 0x06054b50u);
  EXPECT_EQ(le32_at(bytes, bytes.size() - 42), 0x07064b50u);
  EXPECT_EQ(le32_at(bytes, bytes.size() - 98), 0x06064b50u);

  // pgolf's reader and libtorch's (PyTorchStreamReader + its unpickler) agree.
  quant::TorchArchive arch = quant::TorchArchive::from_bytes(bytes, "mem");
  EXPECT_EQ(arch.prefix(), "archive");
  EXPECT_TRUE(at::equal(quant::to_tensor(arch, arch.root().find("a")->tensor), a));
  EXPECT_EQ(arch.root().find("note")->s, "hello");
  const c10::IValue v = torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  ASSERT_TRUE(v.isGenericDict());
  const auto d = v.toGenericDict();
  EXPECT_TRUE(at::equal(d.at("a").toTensor(), a));
  EXPECT_TRUE(at::equal(d.at("b").toTensor(), b));
  EXPECT_EQ(d.at("note").toStringRef(), "hello");
}

// libtorch's own PyTorchStreamWriter, given the same records in the order
// torch.save's Python side writes them, produces the same bytes: all of them
// with torch >= 2.1 (whose writeEndOfFile adds the serialization id); with
// older libtorch (Debian's 1.13) every record through "version" and the
// central directory entries of those records.
TEST(TorchSave, BytesMatchLibtorchsStreamWriter) {
  const PyRef root = quant::py_dict();
  quant::dict_set(root, quant::py_str("w"), quant::py_tensor(quant::DType::Int8, {3, 5}, std::string(15, '\3')));
  quant::dict_set(root, quant::py_str("m"), quant::py_tensor(quant::DType::Float16, {7}, std::string(14, '\1')));
  const std::string mine = quant::torch_save_bytes(root);
  std::vector<const quant::PyValue*> storages;
  const std::string pkl = quant::pickle_torch_object(root, &storages);
  std::string theirs;
  {
    caffe2::serialize::PyTorchStreamWriter w([&](const void* p, size_t n) {
      theirs.append(static_cast<const char*>(p), n);
      return n;
    });
    w.writeRecord("data.pkl", pkl.data(), pkl.size());
    w.writeRecord(".format_version", "1", 1);
    w.writeRecord(".storage_alignment", "64", 2);
    w.writeRecord("byteorder", "little", 6);
    for (size_t k = 0; k < storages.size(); ++k)
      w.writeRecord("data/" + std::to_string(k), storages[k]->data.data(), storages[k]->data.size());
    w.writeEndOfFile();
  }
  if (theirs.find("archive/.data/serialization_id") != std::string::npos) {
    EXPECT_EQ(mine, theirs);
    return;
  }
  // Before torch 2.1: no serialization id record.
  const size_t id_record = mine.find("PK\x03\x04", mine.find("archive/version"));
  ASSERT_NE(id_record, std::string::npos);
  EXPECT_EQ(mine.substr(0, id_record), theirs.substr(0, id_record));
  const size_t mine_cd = mine.find("PK\x01\x02"), theirs_cd = theirs.find("PK\x01\x02");
  const std::string theirs_entries = theirs.substr(theirs_cd, theirs.find("PK\x06\x06") - theirs_cd);
  EXPECT_EQ(mine.substr(mine_cd, theirs_entries.size()), theirs_entries);
}

TEST(TorchSave, BadInputsAreErrors) {
  EXPECT_NE(error_of([] { quant::py_tensor(quant::DType::Float32, {2}, "abc"); }).find("tensor data is 3 bytes"),
            std::string::npos);
  quant::TorchZipWriter z;
  z.write_record("x", "1");
  EXPECT_NE(error_of([&] { z.write_record("x", "2"); }).find("written twice"), std::string::npos);
}

// ---- the int6.ptz export -------------------------------------------------------------

// Imported back through pgolf's int6.ptz reader (which dequantizes as the
// reference's dequantize_mixed does: q.float() * scale.float() per row, cast
// to the reference model's dtype -- bf16 for tok_emb.weight, float32
// otherwise), every tensor equals the artifact's own dequantization cast to
// that dtype, bit for bit. For the float32 tensors that is plain equality
// (both sides compute the same float32 product); tok_emb's is the
// reference's extra bf16 rounding.
TEST(Int6Export, ImportedWeightsEqualTheArtifactsDequantizationBitForBit) {
  for (const ModelConfig& c : {tiny_config(), tiny_frontier_config()}) {
    TempDir d;
    const GptWeights w = random_weights(c, 21);
    const quant::Artifact a = quantized(w);
    quant::Int6ExportInfo info;
    write_file_atomic(d / "final_model.int6.ptz", quant::export_int6_ptz(a, "mem", &info));
    EXPECT_EQ(info.quantized + info.passthrough, int(a.tensors.size()));
    EXPECT_GT(info.quantized, 0);
    EXPECT_EQ(detect_model_file(d / "final_model.int6.ptz"), ModelFileKind::Int6Ptz);
    const auto got = read_reference_state(d / "final_model.int6.ptz", ModelFileKind::Int6Ptz);
    const GptWeights want = quant::dequantize_artifact(a, "mem");
    ASSERT_EQ(got.size(), want.tensors.size());
    for (const quant::ArtifactTensor& t : a.tensors) {
      ASSERT_TRUE(got.count(t.name)) << t.name;
      const at::Tensor& g = got.at(t.name);
      EXPECT_EQ(g.scalar_type(), t.name == "tok_emb.weight" && t.kind == quant::ArtifactTensor::Kind::Quantized
                                     ? at::kBFloat16
                                     : at::kFloat)
          << t.name;
      EXPECT_TRUE(at::equal(g, want.get(t.name).to(g.scalar_type()))) << t.name;
      if (t.kind == quant::ArtifactTensor::Kind::Quantized && t.name != "tok_emb.weight") {
        // The float32 product itself, as the reference computes it.
        const at::Tensor q = at::from_blob(const_cast<int8_t*>(t.values.data()), t.shape, at::kChar).to(at::kFloat);
        const at::Tensor s = at::from_blob(const_cast<uint16_t*>(t.scales.data()), {t.shape[0]}, at::kHalf);
        EXPECT_TRUE(at::equal(g, q * s.to(at::kFloat).unsqueeze(1))) << t.name;
      }
    }
    // It loads as a model with the artifact's config (--config: the file has none).
    write_file_atomic(d / "config.json", want.config.to_json());
    ModelSource src;
    src.path = d / "final_model.int6.ptz";
    src.config_path = d / "config.json";
    const GptWeights loaded = load_model_file(src);
    EXPECT_EQ(loaded.config.to_json(), want.config.to_json());
    EXPECT_EQ(loaded.tensors.size(), want.tensors.size());
  }
}

// With the reference's own dtypes (tok_emb bf16, the rest float32), the
// export round-trips every tensor exactly and the model scores the same.
TEST(Int6Export, ReferenceDtypesRoundTripExactly) {
  TempDir d;
  const ModelConfig c = tiny_config();
  GptWeights w = random_weights(c, 22);
  for (auto& [n, t] : w.tensors) t = t.to(n == "tok_emb.weight" ? at::kBFloat16 : at::kFloat);
  const quant::Artifact a = quantized(w);
  write_file_atomic(d / "m.int6.ptz", quant::export_int6_ptz(a, "mem"));
  const auto got = read_reference_state(d / "m.int6.ptz", ModelFileKind::Int6Ptz);
  const GptWeights want = quant::dequantize_artifact(a, "mem");
  for (const auto& [n, t] : want.tensors) {
    EXPECT_EQ(got.at(n).scalar_type(), t.scalar_type()) << n;
    EXPECT_TRUE(at::equal(got.at(n), t)) << n;
  }
  ModelSource src;
  src.path = d / "m.int6.ptz";
  GptWeights back = load_model_file(src);
  back.config = want.config;  // what the shapes cannot show (softcap, seq len) from the artifact
  ForwardOptions fo;
  fo.precision = Precision::F32;
  const at::Tensor x = at::randint(0, c.vocab_size, {2, 12}, at::detail::createCPUGenerator(5), at::kLong);
  EXPECT_TRUE(at::equal(forward_nll(back, x, x, fo), forward_nll(want, x, x, fo)));
}

TEST(Int6Export, LayoutIsTheReferences) {
  const GptWeights w = random_weights(tiny_config(), 23);
  const quant::Artifact a = quantized(w);
  const std::string raw = quant::int6_torch_save(a, "mem");
  const std::string file = quant::export_int6_ptz(a, "mem");
  EXPECT_EQ(file, quant::export_int6_ptz(a, "mem"));  // deterministic
  // _decompress undoes it: brotli, then the BSHF stride-2 shuffle.
  const std::string shuffled = quant::decompress(file, quant::Codec::Brotli, 1 << 26, "mem");
  EXPECT_EQ(shuffled.substr(0, 5), std::string("BSHF\x02", 5));
  EXPECT_EQ(quant::byte_unshuffle(shuffled, "mem"), raw);

  quant::TorchArchive arch = quant::TorchArchive::from_bytes(raw, "mem");
  const quant::PickleValue& root = arch.root();
  ASSERT_EQ(root.size(), 2u);
  EXPECT_EQ(root.entries[0].first->s, "w");
  EXPECT_EQ(root.entries[1].first->s, "m");
  const quant::PickleValue& wd = *root.find("w");
  const quant::PickleValue& md = *root.find("m");
  ASSERT_EQ(md.size(), a.tensors.size());
  size_t k = 0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const quant::ArtifactTensor& t = a.tensors[i];
    EXPECT_EQ(md.entries[i].first->s, t.name);  // the artifact's order
    if (t.kind == quant::ArtifactTensor::Kind::Quantized) {
      EXPECT_EQ(md.entries[i].second->s, "gptq (int" + std::to_string(t.bits) + ")");
      const quant::PickleValue& q = *wd.entries[k++].second;
      const quant::PickleValue& s = *wd.entries[k++].second;
      EXPECT_EQ(wd.entries[k - 2].first->s, t.name + ".q");
      EXPECT_EQ(wd.entries[k - 1].first->s, t.name + ".scale");
      EXPECT_EQ(q.tensor.dtype, quant::DType::Int8);
      EXPECT_EQ(q.tensor.sizes, t.shape);
      EXPECT_EQ(s.tensor.dtype, quant::DType::Float16);
      EXPECT_EQ(s.tensor.sizes, std::vector<int64_t>{t.shape[0]});
      EXPECT_EQ(arch.contiguous_bytes(q.tensor),
                std::string(reinterpret_cast<const char*>(t.values.data()), t.values.size()));
      EXPECT_EQ(arch.contiguous_bytes(s.tensor),
                std::string(reinterpret_cast<const char*>(t.scales.data()), t.scales.size() * 2));
    } else {
      EXPECT_EQ(md.entries[i].second->s, "passthrough (float16)");
      EXPECT_EQ(wd.entries[k].first->s, t.name);
      EXPECT_EQ(dtype_name(wd.entries[k].second->tensor.dtype), t.dtype);
      EXPECT_EQ(arch.contiguous_bytes(wd.entries[k++].second->tensor), t.data);
    }
  }
  EXPECT_EQ(k, wd.size());
  // libtorch's own reader takes it too.
  const c10::IValue v = torch::jit::pickle_load(std::vector<char>(raw.begin(), raw.end()));
  EXPECT_EQ(v.toGenericDict().at("m").toGenericDict().size(), a.tensors.size());
}

// data.pkl names only what a torch.save of tensors names, all of it on the
// allowlists of pgolf's reader and of torch.load(weights_only=True); and only
// the opcodes listed in the writer's header.
TEST(Int6Export, PickleNamesOnlyAllowlistedGlobals) {
  const quant::Artifact a = quantized(random_weights(tiny_frontier_config(), 24));
  const std::string raw = quant::int6_torch_save(a, "mem");
  quant::ZipReader z(raw, "mem");
  std::string scratch;
  const std::string pkl(z.read(*z.find("archive/data.pkl"), &scratch, 1 << 20));
  const PickleScan s = scan_pickle(pkl);
  ASSERT_EQ(s.error, "");
  const std::set<std::string> got(s.globals.begin(), s.globals.end());
  EXPECT_EQ(s.globals.size(), got.size());  // each written once, then fetched from the memo
  EXPECT_EQ(got, (std::set<std::string>{"torch._utils._rebuild_tensor_v2", "collections.OrderedDict",
                                        "torch.CharStorage", "torch.HalfStorage"}));
  EXPECT_NO_THROW(quant::parse_pickle(pkl, "mem"));  // pgolf's allowlisted interpreter
}

TEST(Int6Export, RefusesWhatTheLayoutCannotHold) {
  const quant::Artifact a = quantized(random_weights(tiny_config(), 25));
  size_t qi = 0, ri = 0;  // an int6 tensor, a raw one
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    if (a.tensors[i].kind == quant::ArtifactTensor::Kind::Raw) ri = i;
    if (a.tensors[i].kind == quant::ArtifactTensor::Kind::Quantized && a.tensors[i].bits == 6) qi = i;
  }
  ASSERT_EQ(a.tensors[qi].bits, 6);
  ASSERT_EQ(a.tensors[ri].kind, quant::ArtifactTensor::Kind::Raw);
  quant::Artifact bad = a;
  bad.tensors[qi].bits = 9;
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("x.pgz: tensor "), std::string::npos);
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("stores values as int8"), std::string::npos);
  bad = a;
  bad.tensors[ri].name = a.tensors[qi].name + ".scale";  // would collide with the quantized tensor's scale
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("would appear twice"), std::string::npos);
  bad = a;
  bad.tensors[ri].dtype = "complex64";
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("complex64"), std::string::npos);
  bad = a;
  bad.tensors[ri].name = "\xff";
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("not UTF-8"), std::string::npos);
  bad = a;
  bad.tensors[qi].values[0] = 127;  // outside int6
  EXPECT_NE(error_of([&] { quant::export_int6_ptz(bad, "x.pgz"); }).find("outside int6"), std::string::npos);
}

}  // namespace
}  // namespace pgolf::test
