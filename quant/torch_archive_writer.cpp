// torch.save without Python: a CPython-compatible protocol-2 pickler for
// state-dict values and PyTorchStreamWriter's ZIP layout. No libtorch here.
#include "quant/torch_archive_writer.h"

#include <zlib.h>

#include <cstdio>
#include <functional>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include "data/error.h"

namespace pgolf::quant {

namespace {

void put16(std::string& o, uint32_t v) {
  o += static_cast<char>(v & 0xFF);
  o += static_cast<char>((v >> 8) & 0xFF);
}
void put32(std::string& o, uint32_t v) {
  put16(o, v & 0xFFFF);
  put16(o, v >> 16);
}
void put64(std::string& o, uint64_t v) {
  put32(o, static_cast<uint32_t>(v));
  put32(o, static_cast<uint32_t>(v >> 32));
}

PyRef make(PyValue::Kind k) {
  auto v = std::make_shared<PyValue>();
  v->kind = k;
  return v;
}

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("torch.save: negative tensor dimension");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 8 / d) throw Error("torch.save: tensor too large");
    n *= d;
  }
  return n;
}

// c10::hash_combine (boost's).
uint64_t hash_combine(uint64_t seed, uint64_t value) {
  return seed ^ (value + 0x9e3779b9 + (seed << 6u) + (seed >> 2u));
}

// ---- the pickler ----------------------------------------------------------------

// CPython's _pickle.c, protocol 2, for the values above (see the header).
class Pickler {
 public:
  std::string out;
  std::vector<const PyValue*> storages;

  void dump(const PyRef& root) {
    out += "\x80\x02";  // PROTO 2
    save(*root);
    out += '.';  // STOP
  }

 private:
  std::unordered_map<const void*, uint32_t> memo_;
  std::unordered_map<std::string, uint32_t> globals_;  // "module\nname" -> memo index
  uint32_t next_ = 0;
  // torch's persistent-id tuple uses two string constants: the same objects
  // for every tensor, so memoized after their first appearance.
  PyValue storage_str_ = str_value("storage"), cpu_str_ = str_value("cpu");

  static PyValue str_value(const char* s) {
    PyValue v;
    v.kind = PyValue::Kind::Str;
    v.s = s;
    return v;
  }

  void binput(uint32_t idx) {
    if (idx < 256) {
      out += 'q';
      out += static_cast<char>(idx);
    } else {
      out += 'r';
      put32(out, idx);
    }
  }
  void binget(uint32_t idx) {
    if (idx < 256) {
      out += 'h';
      out += static_cast<char>(idx);
    } else {
      out += 'j';
      put32(out, idx);
    }
  }
  // memo_put of an object nothing refers to again (fresh tuples, dicts, ...).
  void memo_fresh() { binput(next_++); }
  void memo_put(const void* id) {
    memo_[id] = next_;
    binput(next_++);
  }

  void save_int(int64_t x) {
    if (x >= 0 && x <= 0xFF) {
      out += 'K';  // BININT1
      out += static_cast<char>(x);
    } else if (x >= 0 && x <= 0xFFFF) {
      out += 'M';  // BININT2
      put16(out, static_cast<uint32_t>(x));
    } else if (x >= std::numeric_limits<int32_t>::min() && x <= std::numeric_limits<int32_t>::max()) {
      out += 'J';  // BININT
      put32(out, static_cast<uint32_t>(static_cast<int32_t>(x)));
    } else {
      // LONG1: (bit length of |x|) / 8 + 1 bytes of two's complement, one
      // fewer when that leaves only redundant sign bits of a negative number.
      const uint64_t mag = x < 0 ? 0 - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
      int nbits = 0;
      while (nbits < 64 && (mag >> nbits) != 0) ++nbits;
      int n = (nbits >> 3) + 1;
      std::string b;
      for (int k = 0; k < n; ++k)
        b += static_cast<char>(k < 8 ? (static_cast<uint64_t>(x) >> (8 * k)) & 0xFF : (x < 0 ? 0xFF : 0));
      if (x < 0 && n > 1 && static_cast<unsigned char>(b[size_t(n - 1)]) == 0xFF &&
          (static_cast<unsigned char>(b[size_t(n - 2)]) & 0x80))
        --n;
      out += '\x8a';
      out += static_cast<char>(n);
      out.append(b, 0, size_t(n));
    }
  }

  void save_str_body(const std::string& s) {
    if (s.size() > 0xFFFFFFFFull) throw Error("torch.save: string too long");
    out += 'X';  // BINUNICODE
    put32(out, static_cast<uint32_t>(s.size()));
    out += s;
  }

  void save_global(const char* module, const char* name) {
    const std::string key = std::string(module) + "\n" + name;
    if (auto it = globals_.find(key); it != globals_.end()) return binget(it->second);
    out += 'c';  // GLOBAL
    out += key;
    out += '\n';
    globals_[key] = next_;
    binput(next_++);
  }

  // A tuple of ints made on the spot (torch's size and stride tuples).
  void save_int_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      out += ')';  // EMPTY_TUPLE, not memoized
      return;
    }
    if (v.size() > 3) out += '(';
    for (int64_t x : v) save_int(x);
    out += v.size() > 3 ? 't' : static_cast<char>(0x84 + v.size());  // TUPLE or TUPLE1..3
    memo_fresh();
  }

  void save_tensor(const PyValue& t) {
    save_global("torch._utils", "_rebuild_tensor_v2");
    out += '(';  // the 6 arguments
    // The storage, as torch.save's persistent_id returns it.
    out += '(';
    save(storage_str_);
    save_global("torch", storage_class_name(t.dtype));
    const std::string key = std::to_string(storages.size());
    storages.push_back(&t);
    save_str_body(key);
    memo_fresh();  // a new str each time (str(len(id_map)))
    save(cpu_str_);
    save_int(checked_numel(t.shape));
    out += 't';
    memo_fresh();
    out += 'Q';     // BINPERSID
    save_int(0);    // storage offset
    save_int_tuple(t.shape);
    std::vector<int64_t> stride(t.shape.size());
    int64_t s = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      stride[d] = s;
      s *= std::max<int64_t>(t.shape[d], 1);
    }
    save_int_tuple(stride);
    out += '\x89';  // requires_grad: NEWFALSE
    // backward_hooks: collections.OrderedDict()
    save_global("collections", "OrderedDict");
    out += ')';
    out += 'R';
    memo_fresh();
    out += 't';  // TUPLE of the 6 arguments
    memo_fresh();
    out += 'R';  // REDUCE
    memo_put(&t);
  }

  void save(const PyValue& v) {
    using K = PyValue::Kind;
    switch (v.kind) {  // atoms: never memoized
      case K::None: out += 'N'; return;
      case K::Bool: out += v.b ? '\x88' : '\x89'; return;
      case K::Int: save_int(v.i); return;
      default: break;
    }
    if (auto it = memo_.find(&v); it != memo_.end()) return binget(it->second);
    switch (v.kind) {
      case K::Str:
        save_str_body(v.s);
        memo_put(&v);
        return;
      case K::Tuple:
        if (v.items.empty()) {
          out += ')';
          return;
        }
        if (v.items.size() > 3) out += '(';
        for (const PyRef& x : v.items) save(*x);
        out += v.items.size() > 3 ? 't' : static_cast<char>(0x84 + v.items.size());
        memo_put(&v);
        return;
      case K::Dict: {
        out += '}';  // EMPTY_DICT
        memo_put(&v);
        const size_t n = v.entries.size();
        if (n == 1) {
          save(*v.entries[0].first);
          save(*v.entries[0].second);
          out += 's';  // SETITEM
        } else if (n > 1) {
          size_t pos = 0, i = 0;
          do {  // batches of 1000, as CPython's batch_dict_exact
            i = 0;
            out += '(';
            while (pos < n) {
              save(*v.entries[pos].first);
              save(*v.entries[pos].second);
              ++pos;
              if (++i == 1000) break;
            }
            out += 'u';  // SETITEMS
          } while (i == 1000);
        }
        return;
      }
      case K::Tensor: save_tensor(v); return;
      default: throw Error("torch.save: unsupported value");
    }
  }
};

}  // namespace

// ---- values ------------------------------------------------------------------------

PyRef py_none() { return make(PyValue::Kind::None); }
PyRef py_bool(bool v) {
  PyRef r = make(PyValue::Kind::Bool);
  r->b = v;
  return r;
}
PyRef py_int(int64_t v) {
  PyRef r = make(PyValue::Kind::Int);
  r->i = v;
  return r;
}
PyRef py_str(std::string v) {
  PyRef r = make(PyValue::Kind::Str);
  r->s = std::move(v);
  return r;
}
PyRef py_tuple(std::vector<PyRef> items) {
  PyRef r = make(PyValue::Kind::Tuple);
  r->items = std::move(items);
  return r;
}
PyRef py_dict() { return make(PyValue::Kind::Dict); }
void dict_set(const PyRef& dict, PyRef key, PyRef value) {
  if (!dict || dict->kind != PyValue::Kind::Dict) throw Error("torch.save: dict_set on a non-dict");
  dict->entries.emplace_back(std::move(key), std::move(value));
}
PyRef py_tensor(DType dtype, std::vector<int64_t> shape, std::string data) {
  const int64_t n = checked_numel(shape);
  if (static_cast<uint64_t>(data.size()) != static_cast<uint64_t>(n) * uint64_t(dtype_size(dtype)))
    throw Error("torch.save: tensor data is " + std::to_string(data.size()) + " bytes, its shape and dtype need " +
                std::to_string(n * dtype_size(dtype)));
  PyRef r = make(PyValue::Kind::Tensor);
  r->dtype = dtype;
  r->shape = std::move(shape);
  r->data = std::move(data);
  return r;
}

const char* storage_class_name(DType t) {
  switch (t) {
    case DType::Float32: return "FloatStorage";
    case DType::Float64: return "DoubleStorage";
    case DType::Float16: return "HalfStorage";
    case DType::BFloat16: return "BFloat16Storage";
    case DType::Int8: return "CharStorage";
    case DType::UInt8: return "ByteStorage";
    case DType::Int16: return "ShortStorage";
    case DType::Int32: return "IntStorage";
    case DType::Int64: return "LongStorage";
    case DType::Bool: return "BoolStorage";
  }
  return "?";
}

std::string pickle_torch_object(const PyRef& root, std::vector<const PyValue*>* storages) {
  if (!root) throw Error("torch.save: no object");
  Pickler p;
  p.dump(root);
  if (storages) *storages = std::move(p.storages);
  return std::move(p.out);
}

// ---- zip -------------------------------------------------------------------------

TorchZipWriter::TorchZipWriter(std::string archive_name, uint64_t alignment)
    : archive_name_(std::move(archive_name)), alignment_(alignment) {
  if (archive_name_.empty()) throw Error("torch.save: empty archive name");
  if (alignment_ == 0 || alignment_ > 0x8000) throw Error("torch.save: bad record alignment");
}

void TorchZipWriter::write_record(const std::string& name, std::string_view data) {
  if (finished_) throw Error("torch.save: record after the end of the archive");
  for (const std::string& w : written_)
    if (w == name) throw Error("torch.save: record " + name + " written twice");
  const std::string full = archive_name_ + "/" + name;
  if (full.size() > 0xFFFF) throw Error("torch.save: record name too long");
  const uint64_t cursor = out_.size();
  // ZIP64 extra fields (sizes or offsets >= 4 GiB) are not written here.
  if (data.size() >= 0xFFFFFFFFull || cursor + data.size() + 4096 >= 0xFFFFFFFFull)
    throw Error("torch.save: archives of 4 GiB or more are not supported");
  // detail::getPadding: the data starts at a multiple of the alignment.
  const uint64_t start = cursor + 30 + full.size() + 4;
  const uint64_t pad = (alignment_ - start % alignment_) % alignment_;
  const uint32_t crc = static_cast<uint32_t>(
      crc32_z(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<z_size_t>(data.size())));
  const uint16_t flags = static_cast<uint16_t>((data.empty() ? 0 : 0x0008) | 0x0800);  // descriptor, UTF-8
  put32(out_, 0x04034b50);  // local file header
  put16(out_, 0);           // version needed (stored)
  put16(out_, flags);
  put16(out_, 0);  // method: stored
  put16(out_, 0);  // time (MINIZ_NO_TIME)
  put16(out_, 0);  // date
  put32(out_, 0);  // CRC and sizes follow in the data descriptor
  put32(out_, 0);
  put32(out_, 0);
  put16(out_, static_cast<uint32_t>(full.size()));
  put16(out_, static_cast<uint32_t>(pad + 4));
  out_ += full;
  out_ += "FB";
  put16(out_, static_cast<uint32_t>(pad));
  out_.append(size_t(pad), 'Z');
  out_.append(data);
  // ostream_write_func folds in the CRC of every write that starts like a
  // data descriptor: the real one, and data that happens to begin with it.
  if (data.size() >= 8 && data.compare(0, 4, "PK\x07\x08", 4) == 0) {
    const auto* p = reinterpret_cast<const unsigned char*>(data.data()) + 4;
    combined_crc_ = hash_combine(combined_crc_, uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                                                    uint32_t(p[3]) << 24);
  }
  if (!data.empty()) {
    put32(out_, 0x08074b50);  // data descriptor
    put32(out_, crc);
    put32(out_, static_cast<uint32_t>(data.size()));
    put32(out_, static_cast<uint32_t>(data.size()));
    combined_crc_ = hash_combine(combined_crc_, crc);
  }
  entries_.push_back({full, crc, data.size(), cursor});
  written_.push_back(name);
}

std::string TorchZipWriter::finish() {
  if (finished_) throw Error("torch.save: archive already finished");
  auto has = [&](const char* n) {
    for (const std::string& w : written_)
      if (w == n) return true;
    return false;
  };
  if (!has(".data/version") && !has("version")) write_record("version", "3\n");  // kMinProducedFileFormatVersion
  if (!has("byteorder")) write_record("byteorder", "little");
  if (!has(".data/serialization_id")) {
    std::unordered_set<std::string> names;  // PyTorchStreamWriter::files_written_
    for (const std::string& w : written_) names.insert(w);
    uint64_t name_hash = 0;
    for (const std::string& n : names) name_hash = hash_combine(name_hash, std::hash<std::string>{}(n));
    char id[64];
    std::snprintf(id, sizeof id, "%020llu%020llu", static_cast<unsigned long long>(name_hash),
                  static_cast<unsigned long long>(combined_crc_));
    write_record(".data/serialization_id", id);
  }
  finished_ = true;
  const uint64_t cd_offset = out_.size();
  for (const Entry& e : entries_) {
    put32(out_, 0x02014b50);  // central directory header
    put16(out_, 0);           // version made by (miniz leaves it 0)
    put16(out_, 0);           // version needed
    put16(out_, static_cast<uint32_t>((e.size ? 0x0008 : 0) | 0x0800));
    put16(out_, 0);  // stored
    put16(out_, 0);
    put16(out_, 0);
    put32(out_, e.crc);
    put32(out_, static_cast<uint32_t>(e.size));
    put32(out_, static_cast<uint32_t>(e.size));
    put16(out_, static_cast<uint32_t>(e.name.size()));
    put16(out_, 0);  // extra
    put16(out_, 0);  // comment
    put16(out_, 0);  // disk
    put16(out_, 0);  // internal attributes
    put32(out_, 0);  // external attributes
    put32(out_, static_cast<uint32_t>(e.header_offset));
    out_ += e.name;
  }
  const uint64_t cd_size = out_.size() - cd_offset, n = entries_.size();
  const uint64_t zip64_end = out_.size();
  put32(out_, 0x06064b50);  // ZIP64 end of central directory record
  put64(out_, 44);
  put16(out_, 0x031E);
  put16(out_, 0x002D);
  put32(out_, 0);
  put32(out_, 0);
  put64(out_, n);
  put64(out_, n);
  put64(out_, cd_size);
  put64(out_, cd_offset);
  put32(out_, 0x07064b50);  // ZIP64 locator
  put32(out_, 0);
  put64(out_, zip64_end);
  put32(out_, 1);
  put32(out_, 0x06054b50);  // end of central directory
  put16(out_, 0);
  put16(out_, 0);
  put16(out_, static_cast<uint32_t>(std::min<uint64_t>(n, 0xFFFF)));
  put16(out_, static_cast<uint32_t>(std::min<uint64_t>(n, 0xFFFF)));
  put32(out_, static_cast<uint32_t>(std::min<uint64_t>(cd_size, 0xFFFFFFFF)));
  put32(out_, static_cast<uint32_t>(std::min<uint64_t>(cd_offset, 0xFFFFFFFF)));
  put16(out_, 0);
  return std::move(out_);
}

// ---- torch.save --------------------------------------------------------------------

std::string torch_save_bytes(const PyRef& root, const TorchSaveOptions& opt) {
  std::vector<const PyValue*> storages;
  const std::string program = pickle_torch_object(root, &storages);
  TorchZipWriter zip(opt.archive_name);
  zip.write_record("data.pkl", program);
  zip.write_record(".format_version", "1");
  zip.write_record(".storage_alignment", "64");
  zip.write_record("byteorder", "little");
  for (size_t k = 0; k < storages.size(); ++k) zip.write_record("data/" + std::to_string(k), storages[k]->data);
  return zip.finish();
}

}  // namespace pgolf::quant
