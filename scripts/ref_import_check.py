#!/usr/bin/env python3
"""Reference side of pgolf's import check (bench/ref_import_check.cpp).

Writes parameter-golf model files with the reference scripts' *own* code, and
the per-token NLL of the reference's *own* forward on a fixed batch of
validation tokens, so pgolf's importer (quant/model_files.h) can be compared
against files and numbers it had no hand in:

  baseline  (root train_gpt.py):  final_model.pt, final_model.int8.ptz
  frontier  (records/.../2026-04-10_VarLenAttn/train_gpt.py):
                                  final_model.pt, final_model.int6.ptz

The reference scripts are not part of this repository: --ref-dir holds copies
(train_gpt.py and 2026-04-10_VarLenAttn/train_gpt.py). They are imported as
modules (their main() never runs); only modules missing on this machine are
stubbed (see install_shims), and torch 2.x functions missing from an older
torch get a stand-in, so the same script runs on the GPU machine's torch 2.11
and on Debian's CPU torch 1.13.

Weights: the reference's own initialisation (seeded), then every parameter
perturbed with seeded noise so that zero-initialised projections matter.
Numerics: on CUDA, bf16 autocast around the torch.compile'd forward, as the
reference evaluates; on the CPU, everything in float32.

Output (OUTDIR): tokens.i32 (int32 [B, T+1]), <name>.nll.f32 (float32 [B, T]),
the model files, and manifest.json naming them, with the --set overrides pgolf
needs for what the weights cannot show.
"""
import argparse
import contextlib
import ctypes
import ctypes.util
import importlib
import importlib.util
import io
import json
import math
import os
import sys
import types
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

BOS_ID = 1
FLT_EPS = 1.1920928955078125e-07  # F.rms_norm's eps=None: the float32 epsilon (ATen's accumulation type)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-dir", required=True, help="holds train_gpt.py and 2026-04-10_VarLenAttn/train_gpt.py")
    p.add_argument("--data", required=True, help="folder with fineweb_val_000000.bin and fineweb_train_000000.bin")
    p.add_argument("--out", required=True)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--start", type=int, default=0, help="first validation token of the batch")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--calib-batches", type=int, default=2, help="GPTQ calibration batches (the record: 64)")
    p.add_argument("--calib-seqs", type=int, default=2, help="sequences of train_seq_len per calibration batch")
    p.add_argument("--families", default="baseline,frontier")
    p.add_argument("--shrink", action="store_true",
                   help="smaller frontier widths (every switch still on), for a slow CPU; the GPU run uses the real shapes")
    p.add_argument("--no-compile", action="store_true", help="eager forward on CUDA (not the reference's numerics)")
    return p.parse_args()


# ---------------------------------------------------------------- shims --

def _rms_norm(x, normalized_shape, weight=None, eps=None):
    # torch < 2.4 has no F.rms_norm. Same math: float accumulation, float32 epsilon.
    dims = tuple(range(-len(normalized_shape), 0))
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + (FLT_EPS if eps is None else eps))
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def _repeat_kv(q, k, v, head_dim_axis):
    # GQA: query head h reads KV head h // (H / Hkv), as enable_gqa and FlashAttention do.
    rep = q.size(head_dim_axis) // k.size(head_dim_axis)
    if rep == 1:
        return k, v
    return k.repeat_interleave(rep, dim=head_dim_axis), v.repeat_interleave(rep, dim=head_dim_axis)


def _sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # torch < 2.0 has no F.scaled_dot_product_attention: the plain softmax(q k^T / sqrt(d)) v.
    k, v = _repeat_kv(q, k, v, -3)
    att = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
    T, S = q.size(-2), k.size(-2)
    if is_causal:
        att = att.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else att + attn_mask
    return att.softmax(-1) @ v


def _sdpa_has_gqa():
    if not hasattr(F, "scaled_dot_product_attention"):
        return False
    try:
        t = torch.zeros(1, 2, 1, 2)
        F.scaled_dot_product_attention(t, t[:, :1], t[:, :1], enable_gqa=True)
        return True
    except TypeError:
        return False


def _sdpa(q, k, v, **kw):
    # The native kernel when there is one (GQA expanded here), else the plain math.
    k, v = _repeat_kv(q, k, v, -3)
    kw.pop("enable_gqa", None)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _flash_attn_func(q, k, v, causal=False, **kw):
    # Stands in for FlashAttention 3's flash_attn_func ([B, T, H, D] layout,
    # softmax scale 1/sqrt(D), GQA by head groups) when flash_attn_interface is
    # missing: the same attention through F.scaled_dot_product_attention.
    assert not kw.get("window_size") or tuple(kw["window_size"]) == (-1, -1)
    y = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return y.transpose(1, 2)


def _flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            causal=False, window_size=(-1, -1), **kw):
    # Stands in for FlashAttention 3's flash_attn_varlen_func ([N, H, D] packed
    # sequences, boundaries in cu_seqlens, trailing entries padded with N):
    # attention only within a sequence (a block-diagonal mask), causal inside it.
    assert tuple(window_size) == (-1, -1)  # the record passes cu_seqlens_k = cu_seqlens_q
    n = q.size(0)
    pos = torch.arange(n, device=q.device, dtype=cu_seqlens_q.dtype)
    seg = torch.searchsorted(cu_seqlens_q.contiguous(), pos, right=True)
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask = mask & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    y = _sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask)
    return y[0].transpose(0, 1)


def _brotli_via_ctypes():
    # The `brotli` python module's compress/decompress on the system's
    # libbrotlienc/libbrotlidec (same defaults: lgwin 22, generic mode; the
    # bytes may differ from the module's streaming encoder, the stream is valid brotli).
    def lib(name):
        return ctypes.CDLL(ctypes.util.find_library(name) or f"lib{name}.so.1")
    enc, dec = lib("brotlienc"), lib("brotlidec")
    enc.BrotliEncoderMaxCompressedSize.restype = ctypes.c_size_t
    enc.BrotliEncoderMaxCompressedSize.argtypes = [ctypes.c_size_t]
    enc.BrotliEncoderCompress.restype = ctypes.c_int
    enc.BrotliEncoderCompress.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p,
                                          ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p]
    dec.BrotliDecoderDecompress.restype = ctypes.c_int
    dec.BrotliDecoderDecompress.argtypes = [ctypes.c_size_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.c_char_p]

    def compress(data, quality=11, lgwin=22, mode=0):
        data = bytes(data)
        cap = enc.BrotliEncoderMaxCompressedSize(len(data)) or len(data) + (len(data) >> 2) + 1024
        out, size = ctypes.create_string_buffer(cap), ctypes.c_size_t(cap)
        if not enc.BrotliEncoderCompress(quality, lgwin, mode, len(data), data, ctypes.byref(size), out):
            raise RuntimeError("BrotliEncoderCompress failed")
        return out.raw[: size.value]

    def decompress(data):
        data, cap = bytes(data), max(1 << 20, 8 * len(data))
        while cap <= 1 << 34:  # the one-shot decoder needs room for all of it: grow until it fits
            out, size = ctypes.create_string_buffer(cap), ctypes.c_size_t(cap)
            if dec.BrotliDecoderDecompress(len(data), data, ctypes.byref(size), out) == 1:
                return out.raw[: size.value]
            cap *= 4
        raise RuntimeError("BrotliDecoderDecompress failed")

    m = types.ModuleType("brotli")
    m.compress, m.decompress = compress, decompress
    return m


def _triton_stub(name):
    # The record defines a Triton kernel for training (never called here); its
    # signature needs tl.constexpr and the decorator triton.jit.
    m = types.ModuleType(name)
    if name == "triton":
        m.jit = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
        m.cdiv = lambda a, b: (a + b - 1) // b
    elif name == "triton.language":
        m.constexpr = object
    elif name == "triton.tools.tensor_descriptor":
        m.TensorDescriptor = type("TensorDescriptor", (), {})
    return m


def ensure_module(name, make):
    """Imports `name`; only if that fails, registers make(name) in its place."""
    try:
        importlib.import_module(name)
        return False
    except ImportError:
        parent, _, child = name.rpartition(".")
        if parent:
            ensure_module(parent, make)
        m = make(name)
        sys.modules[name] = m
        if parent:
            setattr(sys.modules[parent], child, m)
        return True


def install_shims():
    """Stand-ins for what this machine lacks; returns their names (for the manifest)."""
    done = []
    if not hasattr(torch, "compile"):
        torch.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)  # eager
        done.append("torch.compile (eager)")
    if not hasattr(F, "rms_norm"):
        F.rms_norm = _rms_norm
        done.append("F.rms_norm")
    if not _sdpa_has_gqa():
        native = getattr(F, "scaled_dot_product_attention", None)
        F.scaled_dot_product_attention = _sdpa_math if native is None else (
            lambda q, k, v, enable_gqa=False, **kw: native(q, *_repeat_kv(q, k, v, -3), **kw))
        done.append("F.scaled_dot_product_attention" + (" (math)" if native is None else " (enable_gqa)"))
    if ensure_module("sentencepiece", types.ModuleType):
        done.append("sentencepiece (unused here)")
    if ensure_module("brotli", lambda n: _brotli_via_ctypes()):
        done.append("brotli (ctypes libbrotli)")

    def flash(name):
        m = types.ModuleType(name)
        m.flash_attn_func, m.flash_attn_varlen_func = _flash_attn_func, _flash_attn_varlen_func
        return m
    if ensure_module("flash_attn_interface", flash):
        done.append("flash_attn_interface (SDPA)")
    for name in ("triton", "triton.language", "triton.tools.tensor_descriptor"):
        if ensure_module(name, _triton_stub):
            done.append(name + " (stub)")
    return done


def load_reference(path, name, env):
    """Imports a reference script as a module, with its Hyperparameters' env vars set meanwhile."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -------------------------------------------------------------- weights --

def perturb(model, seed, num_layers):
    """Seeded noise on every parameter, so that the file exercises every tensor
    and the NLL is sensitive to every switch: a model whose logits barely vary
    would hide an import mistake inside the bf16 tolerance. Input matrices
    N(0, (1/sqrt(fan_in))^2); output projections (attn / MLP proj, zero at
    init) N(0, (3/sqrt(fan_in))^2), so the blocks outweigh x0 in the residual
    stream; vectors and scalars N(0, 0.1^2); the tied embedding N(0, 0.07^2):
    logits with a spread of about 1.5 and NLL around 10 nats (ln V = 9.0),
    the input token's own logit kept well below the soft cap."""
    g = torch.Generator().manual_seed(seed)

    def is_output(name, i):  # the zero-initialised projections, banked (frontier) or not
        return ".proj." in name or name == "mlp_down_bank" or (name == "qo_bank" and i >= num_layers)

    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "tok_emb" in name:
                noise *= 0.07
            elif p.ndim >= 2 and min(p.shape[-2:]) > 8:
                mats = noise.view(-1, *p.shape[-2:])
                for i in range(mats.size(0)):
                    mats[i] *= (3.0 if is_output(name, i) else 1.0) / math.sqrt(p.shape[-1])
            else:
                noise *= 0.1
            p.copy_((p.float() + noise.to(p.device)).to(p.dtype))


def reference_layout_baseline(root, hp):
    """The root script's model as main() builds it: bf16, CastedLinear weights and control tensors back to fp32."""
    m = root.GPT(vocab_size=hp.vocab_size, num_layers=hp.num_layers, model_dim=hp.model_dim, num_heads=hp.num_heads,
                 num_kv_heads=hp.num_kv_heads, mlp_mult=hp.mlp_mult, tie_embeddings=hp.tie_embeddings,
                 tied_embed_init_std=hp.tied_embed_init_std, logit_softcap=hp.logit_softcap,
                 rope_base=hp.rope_base, qk_gain_init=hp.qk_gain_init).bfloat16()
    for mod in m.modules():
        if isinstance(mod, root.CastedLinear):
            mod.float()
    root.restore_low_dim_params_to_fp32(m)
    return m


def reference_layout_frontier(rec, h):
    """The record's model as train_model() / deserialize() build it."""
    m = rec.GPT(h).bfloat16()
    rec.restore_fp32_params(m)
    return m


# ------------------------------------------------------------- numerics --

class Runner:
    """The reference's eval numerics: bf16 autocast + torch.compile on CUDA, float32 on the CPU."""

    def __init__(self, device, compile_):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.compile = self.cuda and compile_
        self.compile_error = None  # set when torch.compile failed and the eager forward ran instead

    def prepare(self, model):
        model = model.to(self.device).eval()
        return model if self.cuda else model.float()  # CPU: bf16 tensors (tok_emb, inv_freq) exactly widened

    def compiled(self, fn):
        if not self.compile:
            return fn
        cfn = torch.compile(fn, dynamic=False, fullgraph=True)

        def call(*a, **kw):
            # The compiled graph is the reference's numerics (SPEC 6); if this
            # machine cannot compile, say so in the manifest and run eagerly.
            if self.compile_error is None:
                try:
                    return cfn(*a, **kw)
                except Exception as e:  # noqa: BLE001 (any compiler failure)
                    self.compile_error = f"{type(e).__name__}: {e}"[:500]
                    print(f"ref_import_check: torch.compile failed, eager from here: {self.compile_error}",
                          file=sys.stderr)
            return fn(*a, **kw)
        return call

    def autocast(self):
        if not self.cuda:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


_PER_TOKEN_F = None


def per_token_functional():
    """torch.nn.functional with cross_entropy forced to reduction='none': put in
    place of the root script's `F`, its GPT.forward returns per-token NLL
    instead of their mean (the forward itself is untouched). One object, so a
    compiled graph's guard on the global holds across calls."""
    global _PER_TOKEN_F
    if _PER_TOKEN_F is not None:
        return _PER_TOKEN_F
    m = types.ModuleType("functional_per_token")
    m.__dict__.update({k: v for k, v in F.__dict__.items() if not k.startswith("__")})

    def cross_entropy(input, target, *args, reduction="mean", **kw):
        return F.cross_entropy(input, target, *args, reduction="none", **kw)
    m.cross_entropy = cross_entropy
    _PER_TOKEN_F = m
    return m


def baseline_nll(root, run, fwd, tokens):
    x = tokens[:, :-1].to(run.device, torch.int64)
    y = tokens[:, 1:].to(run.device, torch.int64)
    real_f, root.F = root.F, per_token_functional()
    try:
        with torch.inference_mode(), run.autocast():
            nll = fwd(x, y)
    finally:
        root.F = real_f
    return nll.float().view(x.shape).cpu()


def frontier_nll(rec, h, fwd_logits, run, tokens):
    """eval_val's forward, one row at a time: varlen attention restricted to
    documents (cu_seqlens from BOS, _build_cu_seqlens), then per-token CE."""
    rows = []
    for b in range(tokens.size(0)):
        x = tokens[b, :-1].to(run.device, torch.int64)
        y = tokens[b, 1:].to(run.device, torch.int64)
        bos_pos = (x == BOS_ID).nonzero(as_tuple=True)[0].tolist()
        cu, max_seqlen = rec._build_cu_seqlens(bos_pos, x.numel(), x.device, h.eval_seq_len, 64)
        with torch.no_grad(), run.autocast():
            logits = fwd_logits(x[None], cu_seqlens=cu, max_seqlen=max_seqlen)
        rows.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y, reduction="none"))
    return torch.stack(rows).float().cpu()


# -------------------------------------------------------------- families --

def run_baseline(root, run, tokens, out, seed):
    hp = root.Hyperparameters()
    d = out / "baseline"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = reference_layout_baseline(root, hp)
    perturb(model, seed + 1, hp.num_layers)
    # As main(): the raw state dict, then the int8 + zlib artifact from the script's own quantizer.
    torch.save(model.state_dict(), d / "final_model.pt")
    quant_obj, _ = root.quantize_state_dict_int8(model.state_dict())
    buf = io.BytesIO()
    torch.save(quant_obj, buf)
    (d / "final_model.int8.ptz").write_bytes(zlib.compress(buf.getvalue(), level=9))

    # Reference forward of each file, loaded back from disk; like main(), the
    # int8 roundtrip is loaded into the same (compiled) model.
    eval_model = run.prepare(reference_layout_baseline(root, hp))
    fwd = run.compiled(eval_model)
    eval_model.load_state_dict(torch.load(d / "final_model.pt", map_location="cpu"), strict=True)
    nll_pt = baseline_nll(root, run, fwd, tokens)
    blob = (d / "final_model.int8.ptz").read_bytes()
    quant_state = torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu")
    eval_model.load_state_dict(root.dequantize_state_dict_int8(quant_state), strict=True)
    nll_q = baseline_nll(root, run, fwd, tokens)
    sets = [f"rope_base={hp.rope_base}", f"logit_softcap={hp.logit_softcap}"]
    return [("baseline/final_model.pt", "baseline_pt", nll_pt, sets, False),
            ("baseline/final_model.int8.ptz", "baseline_int8", nll_q, sets, False)]


def frontier_sets(h):
    # What the weights cannot show, as the run's Hyperparameters give it (what --config-from-log would read).
    return [f"xsa_last_n={h.xsa_last_n}", f"num_loops={h.num_loops}", f"loop_start={h.loop_start}",
            f"loop_end={h.loop_end}", f"rope_dims={h.rope_dims}", f"rope_base={h.rope_base}",
            f"rope_yarn={int(h.rope_yarn)}", f"ln_scale={int(h.ln_scale)}",
            f"parallel_start_layer={h.parallel_start_layer}", f"logit_softcap={h.logit_softcap}",
            f"train_seq_len={h.train_seq_len}", f"eval_seq_len={h.eval_seq_len}"]


def run_frontier(rec, run, tokens, out, seed, data, args):
    d = out / "frontier"
    d.mkdir(parents=True, exist_ok=True)
    h = rec.Hyperparameters()
    h.model_path = str(d / "final_model.pt")
    h.quantized_model_path = str(d / "final_model.int6.ptz")
    h.train_files = str(data / "fineweb_train_000000.bin")
    h.gptq_calibration_batches = args.calib_batches
    h.train_batch_tokens = args.calib_seqs * h.train_seq_len * h.grad_accum_steps
    assert tokens.size(1) - 1 <= h.eval_seq_len, "documents longer than eval_seq_len would be split"
    torch.manual_seed(seed)
    model = reference_layout_frontier(rec, h)
    perturb(model, seed + 2, h.num_layers)
    model.looping_active = h.num_loops > 0  # as after training (enable_looping_at)
    # serialize(): the state dict, Hessians from calibration data, GPTQ, torch.save, byte shuffle + brotli.
    torch.save(model.state_dict(), h.model_path)
    sd_cpu = rec._unbank_state_dict(model.state_dict(), h.num_layers)
    calib_model = run.prepare(model)  # CPU: widened to float32 in place (bf16 is slow there); CUDA: as serialize()
    hessians = rec.collect_hessians(calib_model, rec.ShuffledSequenceLoader(h, run.device), h, run.device,
                                    n_calibration_batches=h.gptq_calibration_batches)
    quant_result, quant_meta = rec.gptq_mixed_quantize(sd_cpu, hessians, h)
    buf = io.BytesIO()
    torch.save({"w": quant_result, "m": quant_meta}, buf)
    Path(h.quantized_model_path).write_bytes(rec._compress(buf.getvalue(), h.compressor))
    del calib_model, hessians

    # The .pt as the EVAL_ONLY_PATH branch loads it; the .ptz through deserialize().
    pt_model = reference_layout_frontier(rec, h)
    pt_model.load_state_dict(torch.load(h.model_path, map_location="cpu"), strict=True)
    results = []
    for name, key, m in (("frontier/final_model.pt", "frontier_pt", pt_model),
                         ("frontier/final_model.int6.ptz", "frontier_int6", rec.deserialize(h, torch.device("cpu")))):
        m = run.prepare(m)
        m.looping_active = h.num_loops > 0
        nll = frontier_nll(rec, h, run.compiled(m.forward_logits), run, tokens)
        results.append((name, key, nll, frontier_sets(h), True))
    return results


def read_shard(path):
    """A token shard (SPEC 1): 256 int32 header (magic, version, n), n uint16 tokens.
    Read here rather than with the reference's load_data_shard: torch < 2.3 has no uint16 tensors."""
    import numpy as np
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size != 256 or header[0] != 20240520 or header[1] != 1:
        sys.exit(f"ref_import_check: {path}: not a token shard")
    n = int(header[2])
    if path.stat().st_size != 1024 + 2 * n:
        sys.exit(f"ref_import_check: {path}: size does not match the header")
    return torch.from_numpy(np.fromfile(path, dtype="<u2", count=n, offset=1024).astype(np.int64))


SHRINK = {"MODEL_DIM": "256", "EMBEDDING_DIM": "256", "NUM_HEADS": "4", "NUM_KV_HEADS": "2"}


def main():
    args = parse_args()
    ref, data, out = Path(args.ref_dir), Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("ref_import_check: --device cuda but torch sees no CUDA device")
    shims = install_shims()
    if args.device == "cuda":
        # main()'s math settings (flash SDPA first; math kept as the fallback for masked attention).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(True)
    run = Runner(args.device, not args.no_compile)
    families = set(args.families.split(","))
    root = load_reference(ref / "train_gpt.py", "ref_train_gpt", {"VOCAB_SIZE": "8192"})
    rec = None
    if "frontier" in families:
        env = {"VOCAB_SIZE": "8192", **(SHRINK if args.shrink else {})}
        rec = load_reference(ref / "2026-04-10_VarLenAttn" / "train_gpt.py", "ref_varlen_attn", env)

    # The fixed batch: B rows of T+1 consecutive validation tokens (row b starts at start + b*T).
    val = read_shard(data / "fineweb_val_000000.bin")
    B, T = args.batch, args.seq_len
    n = args.start + B * T + 1
    if val.numel() < n:
        sys.exit(f"ref_import_check: the validation shard has {val.numel()} tokens, need {n}")
    tokens = torch.stack([val[args.start + b * T: args.start + b * T + T + 1] for b in range(B)])
    tokens.to(torch.int32).numpy().tofile(out / "tokens.i32")

    results = []
    if "baseline" in families:
        results += run_baseline(root, run, tokens, out, args.seed)
    if rec is not None:
        results += run_frontier(rec, run, tokens, out, args.seed, data, args)
    entries = []
    for file, key, nll, sets, doc_mask in results:
        if not torch.isfinite(nll).all():
            sys.exit(f"ref_import_check: non-finite reference NLL for {file}")
        nll.numpy().astype("<f4").tofile(out / f"{key}.nll.f32")
        entries.append({"file": file, "nll": f"{key}.nll.f32", "family": file.split("/")[0],
                        "kind": file.split("final_model.")[1], "doc_mask": doc_mask, "sets": sets,
                        "ref_mean_nll": float(nll.double().mean())})
        print(f"{file}: mean reference NLL {entries[-1]['ref_mean_nll']:.6f}")
    manifest = {"B": B, "T": T, "start": args.start, "bos_id": BOS_ID, "tokens": "tokens.i32",
                "ref_device": args.device, "ref_dtype": "bf16" if run.cuda else "f32",
                "ref_compiled": run.compile and run.compile_error is None, "compile_error": run.compile_error,
                "torch": torch.__version__, "shims": shims, "shrink": args.shrink, "seed": args.seed,
                "entries": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {out / 'manifest.json'} ({len(entries)} files; shims: {', '.join(shims) or 'none'})")


if __name__ == "__main__":
    main()
