#!/usr/bin/env python3
"""Checks a `pgolf export --raw` archive against CPython's own pickler and zipfile.

Usage: export_check.py ARCHIVE

No torch needed: stand-ins for torch._utils._rebuild_tensor_v2, torch.<X>Storage
and tensors reproduce what torch.save hands the pickler (Tensor.__reduce_ex__
of a plain CPU tensor, torch.save's persistent_id), so pickling the same
{"w": ..., "m": ...} dicts the way the reference builds them
(gptq_mixed_quantize: a passthrough tensor's name is one str object in both
dicts, "passthrough (float16)" one literal, "gptq (int<b>)" an f-string each
time) must give data.pkl byte for byte. The ZIP side is read with zipfile
(central directory, CRCs) plus the local headers by hand (64-byte alignment,
the "FB" padding field, the data-descriptor flag, record order).
Prints one line per check; exit code 1 on the first failure.
"""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

STORAGES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "CharStorage": 1,
            "ByteStorage": 1, "ShortStorage": 2, "IntStorage": 4, "LongStorage": 8, "BoolStorage": 1}


def fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, *rest):
        return FakeTensor(storage, size, stride, offset)

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in STORAGES:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch


class FakeStorage:
    def __init__(self, cls, numel):
        self.cls, self.numel = cls, numel


class FakeTensor:
    def __init__(self, storage, size, stride=None, offset=0):
        self.storage, self.size, self.offset = storage, tuple(size), offset
        self.stride = tuple(stride) if stride is not None else None

    def contiguous_stride(self):
        out, s = [], 1
        for d in reversed(self.size):
            out.append(s)
            s *= max(d, 1)
        return tuple(reversed(out))

    def __reduce_ex__(self, proto):  # Tensor._reduce_ex_internal, plain CPU tensor
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.size), tuple(self.contiguous_stride()), False,
                 collections.OrderedDict()))


class TorchPickler(pickle.Pickler):  # torch.save's persistent_id
    def __init__(self, f):
        super().__init__(f, protocol=2)
        self.id_map = {}

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            key = self.id_map.setdefault(id(obj), str(len(self.id_map)))
            return ("storage", obj.cls, key, "cpu", obj.numel)
        return None


class Reader(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return sys.modules["torch._utils"]._rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return getattr(sys.modules["torch"], name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        tag, cls, key, location, numel = pid
        assert tag == "storage" and location == "cpu", pid
        st = FakeStorage(cls, numel)
        st.key = key
        return st


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def ok(msg):
    print(f"ok   {msg}")


def main(path):
    torch = fake_torch()
    raw = open(path, "rb").read()
    z = zipfile.ZipFile(io.BytesIO(raw))
    bad = z.testzip()
    if bad is not None:
        fail(f"CRC of {bad}")
    names = [i.filename for i in z.infolist()]
    prefix = "archive/"
    pkl = z.read(prefix + "data.pkl")
    doc = Reader(io.BytesIO(pkl)).load()
    if not (isinstance(doc, dict) and list(doc) == ["w", "m"]):
        fail("root is not {'w', 'm'}")
    w, m = doc["w"], doc["m"]
    nstor = len(w)
    want = ([prefix + n for n in ["data.pkl", ".format_version", ".storage_alignment", "byteorder"]] +
            [prefix + f"data/{k}" for k in range(nstor)] + [prefix + "version", prefix + ".data/serialization_id"])
    if names != want:
        fail(f"records {names[:6]}... are not {want[:6]}...")
    ok(f"{len(names)} records in torch.save's order under {prefix}, CRCs good")
    for n, v in [(".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little"), ("version", b"3\n")]:
        if z.read(prefix + n) != v:
            fail(f"{n} is {z.read(prefix + n)!r}")
    sid = z.read(prefix + ".data/serialization_id")
    if len(sid) != 40 or not sid.isdigit():
        fail(f"serialization id {sid!r}")
    for info in z.infolist():
        h = info.header_offset
        sig, need, flags, method, tm, dt, crc, cs, us, nlen, xlen = struct.unpack_from("<IHHHHHIIIHH", raw, h)
        extra = raw[h + 30 + nlen:h + 30 + nlen + xlen]
        data_at = h + 30 + nlen + xlen
        if sig != 0x04034B50 or method != 0 or need != 0 or (tm, dt) != (0, 0) or flags != (0x0808 if info.file_size else 0x0800):
            fail(f"local header of {info.filename}")
        if extra[:2] != b"FB" or struct.unpack_from("<H", extra, 2)[0] != xlen - 4 or extra[4:] != b"Z" * (xlen - 4):
            fail(f"padding field of {info.filename}")
        if data_at % 64:
            fail(f"{info.filename} data at {data_at}, not 64-aligned")
        if info.file_size and raw[data_at + info.file_size:data_at + info.file_size + 4] != b"PK\x07\x08":
            fail(f"no data descriptor after {info.filename}")
    ok("every record stored, data 64-byte aligned behind an 'FB' field, data descriptors, DOS time 0")
    if raw[-22:-18] != b"PK\x05\x06" or raw[-42:-38] != b"PK\x06\x07" or raw[-98:-94] != b"PK\x06\x06":
        fail("ZIP64 end record, locator and end record are not at the end")
    ok("ZIP64 end record + locator + end record")

    # Storages: one per tensor, keys 0.. in order, numel * itemsize bytes.
    for k, (key, t) in enumerate(w.items()):
        st = t.storage
        if st.key != str(k) or t.offset != 0 or t.stride != t.contiguous_stride():
            fail(f"{key}: storage {st.key}, offset {t.offset}, stride {t.stride}")
        numel = 1
        for d in t.size:
            numel *= d
        if st.numel != numel or len(z.read(prefix + f"data/{k}")) != numel * STORAGES[st.cls.__name__]:
            fail(f"{key}: storage size")
    # The reference's dicts, rebuilt with its object identities.
    result, meta = {}, {}
    passthrough = "passthrough (float16)"
    storage_of = {}
    for name, kind in m.items():
        name = "".join(list(name))  # a fresh str object, as the state dict's key would be
        if kind == "passthrough (float16)":
            t = w[name]
            result[name] = FakeTensor(FakeStorage(t.storage.cls, t.storage.numel), t.size)
            meta[name] = passthrough
        elif kind.startswith("gptq (int"):
            bits = int(kind[len("gptq (int"):-1])
            if not 2 <= bits <= 8:
                fail(f"{name}: {kind}")
            q, s = w[name + ".q"], w[name + ".scale"]
            if q.storage.cls.__name__ != "CharStorage" or s.storage.cls.__name__ != "HalfStorage" or s.size != q.size[:1]:
                fail(f"{name}: .q must be int8 and .scale fp16 with one value per row")
            result[name + ".q"] = FakeTensor(FakeStorage(q.storage.cls, q.storage.numel), q.size)
            result[name + ".scale"] = FakeTensor(FakeStorage(s.storage.cls, s.storage.numel), s.size)
            meta[name] = f"gptq (int{bits})"
        else:
            fail(f"{name}: unknown kind {kind!r}")
    if list(result) != list(w):
        fail("'w' entries are not in the order of 'm'")
    buf = io.BytesIO()
    TorchPickler(buf).dump({"w": result, "m": meta})
    mine = buf.getvalue()
    if mine != pkl:
        at = next((i for i, (a, b) in enumerate(zip(mine, pkl)) if a != b), min(len(mine), len(pkl)))
        fail(f"data.pkl differs from CPython's pickle at byte {at} of {len(pkl)} "
             f"(cpython {mine[max(0, at - 8):at + 8]!r}, export {pkl[max(0, at - 8):at + 8]!r})")
    ok(f"data.pkl ({len(pkl)} bytes, {len(m)} tensors) equals CPython's protocol-2 pickle of the reference's dicts")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    main(sys.argv[1])
