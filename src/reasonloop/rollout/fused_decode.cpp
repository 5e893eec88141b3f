// One decode step of a Llama-family model for CPU, as a single call: the maths of
// kv_cache.StaticDecoder._decode_layer with the elementwise work and the attention in plain loops.
//
// Why: on a CPU a small model's one-token decode step is mostly per-op overhead (~110 small torch
// ops through Python) and K/V reads; its projections take less than half of the step. Here the
// projections stay MKL/oneDNN matmuls (at::mm / addmm) and everything between them is one loop over
// rows each, and attention reads each prompt's keys/values once per group instead of once per sample
// (the G samples of a prompt share the prompt part of the cache; only completion tokens are per row).
// A BitNet b1.58 model's projections are packed ternary codes instead, run through the ternary
// kernel's op (rollout/ternary_decode.cpp) from inside this step: one call per token either way.
//
// Layout (all float32, contiguous):
//   h        [n, C]                   hidden states of the n live rows (updated in place)
//   kp, vp   [B, KV, P/W, D, W], [B, KV, P, D] per layer: the prompts' keys (in [D, W] blocks of
//            W positions, so q.k runs along positions) and values, left-padded: prompt b is
//            valid from position pstart[b]
//   kc, vc   [R, KV, T/W, D, W], [R, KV, T, D] per layer: completion keys and values; live row i
//            owns cache row slot[i] (finished rows leave by dropping their slot, no cache row moves)
//   grp      [n] int64                the prompt of each live row
//   slot     [n] int64                the completion cache row of each live row
//   pos      [n] int64                RoPE position of the token fed to each row
//   cos, sin [max_pos, D]             RoPE tables; sin has the first half negated (rotate-half folded in)
// The token fed at step t is written at completion column t and attends to prompt columns
// pstart[b]..P-1 and completion columns 0..t.
//
// The attention, softmax and SiLU loops run on 8-float vectors (AVX2 registers) with independent
// accumulators; exponentials use a Cephes-style polynomial (within ~2 ulp of expf) so they vectorise.
// Results match the torch path within float rounding, not bit for bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

constexpr int64_t W = 16;  // positions per block of keys in the cache layout (two 8-float vectors)

// 8 floats (one AVX2 register): GCC/Clang vector extensions, so one source serves every x86 build
// (-march=native gives AVX2 + FMA here; without AVX they split into SSE halves). An earlier version
// used 16-float vectors, which on AVX2 (no AVX-512) kept every accumulator on the stack: each FMA went
// through a store and a reload, and the attention ran at ~1 GFMA/s (docs/speed.md, "Speed II").
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int64_t V = 8;
inline v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
inline v8 splat(float x) { return v8{} + x; }
inline float hsum(v8 v) {
  float s = 0.f;
  for (int l = 0; l < V; ++l) s += v[l];
  return s;
}
inline float hmax(v8 v) {
  float m = v[0];
  for (int l = 1; l < V; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

// bfloat16 as raw bits (rollout.decode_precision=bf16: the projections' inputs and outputs). `narrow` rounds to
// nearest even with NaN -> 0x7FC0, as torch's float -> bfloat16 conversion does; `widen` is exact. Plain loops
// over contiguous rows: they vectorise.
typedef uint16_t bf16;
inline void narrow(const float* x, bf16* out, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    out[i] = x[i] != x[i] ? uint16_t(0x7FC0) : rounded;
  }
}
inline void widen(const bf16* x, float* out, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(out + i, &bits, sizeof(bits));
  }
}
inline void add_widened(const bf16* y, float* h, int64_t len) {  // h += y, y widened
  for (int64_t i = 0; i < len; ++i) {
    const uint32_t bits = static_cast<uint32_t>(y[i]) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    h[i] += f;
  }
}

// exp(x), 0 below -87.3 (so exp(-inf) == 0), within ~2 ulp of expf elsewhere
inline float exp_poly(float x) {
  const bool under = x < -87.3f;
  x = under ? -87.3f : (x > 88.7f ? 88.7f : x);
  float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.f : p * scale;
}

// exp_poly on 8 lanes, the same operations per lane (floor done exactly: truncate, then step down
// where the truncation rounded up)
inline v8 exp_v8(v8 x) {
  const v8i under = x < splat(-87.3f);
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  x = x > splat(88.7f) ? splat(88.7f) : x;
  const v8 y = x * 1.44269504088896341f + 0.5f;
  v8 k = __builtin_convertvector(__builtin_convertvector(y, v8i), v8);
  k = k > y ? k - 1.f : k;
  const v8 r = x - k * 0.693359375f + k * 2.12194440e-4f;
  v8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? v8{} : p * scale;
}

// out[c * W + l] = scale * sum_e q[e] * k[c, e, l] for the first `chunks` [D, W] blocks of k. Two
// blocks at a time (four 8-lane halves) and even/odd e apart: eight independent FMA chains, all in
// registers (FMA latency x throughput on this CPU). D is even.
inline void dot_chunks(const float* q, const float* k, int64_t chunks, int64_t D, float scale, float* out) {
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    const float* k0 = k + c * D * W;
    const float* k1 = k0 + D * W;
    v8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t e = 0; e < D; e += 2) {
      const v8 qe = splat(q[e]), qo = splat(q[e + 1]);
      a0 += qe * load(k0 + e * W);
      a1 += qe * load(k0 + e * W + V);
      a2 += qo * load(k0 + (e + 1) * W);
      a3 += qo * load(k0 + (e + 1) * W + V);
      b0 += qe * load(k1 + e * W);
      b1 += qe * load(k1 + e * W + V);
      b2 += qo * load(k1 + (e + 1) * W);
      b3 += qo * load(k1 + (e + 1) * W + V);
    }
    store(out + c * W, (a0 + a2) * scale);
    store(out + c * W + V, (a1 + a3) * scale);
    store(out + (c + 1) * W, (b0 + b2) * scale);
    store(out + (c + 1) * W + V, (b1 + b3) * scale);
  }
  if (c < chunks) {
    const float* k0 = k + c * D * W;
    v8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t e = 0; e < D; e += 2) {
      const v8 qe = splat(q[e]), qo = splat(q[e + 1]);
      a0 += qe * load(k0 + e * W);
      a1 += qe * load(k0 + e * W + V);
      a2 += qo * load(k0 + (e + 1) * W);
      a3 += qo * load(k0 + (e + 1) * W + V);
    }
    store(out + c * W, (a0 + a2) * scale);
    store(out + c * W + V, (a1 + a3) * scale);
  }
}

// acc[j] += sum_u w[u] * v[u, e + j * V .. e + (j + 1) * V) for j < J, positions two at a time into
// separate accumulators (2 * J independent FMA chains, in registers for J <= 4)
template <int J>
inline void accumulate(const float* w, const float* v, int64_t n, int64_t D, int64_t e, v8* even, v8* odd) {
  int64_t u = 0;
  for (; u + 2 <= n; u += 2) {
    const float* r0 = v + u * D + e;
    const float* r1 = r0 + D;
    const v8 w0 = splat(w[u]), w1 = splat(w[u + 1]);
    for (int j = 0; j < J; ++j) {
      even[j] += w0 * load(r0 + j * V);
      odd[j] += w1 * load(r1 + j * V);
    }
  }
  if (u < n) {
    const v8 w0 = splat(w[u]);
    for (int j = 0; j < J; ++j) even[j] += w0 * load(v + u * D + e + j * V);
  }
}

template <int J>
inline void weighted_block(const float* w1, const float* v1, int64_t n1, const float* w2, const float* v2,
                           int64_t n2, int64_t D, int64_t e, float* out) {
  v8 even[J] = {}, odd[J] = {};
  accumulate<J>(w1, v1, n1, D, e, even, odd);
  accumulate<J>(w2, v2, n2, D, e, even, odd);
  for (int j = 0; j < J; ++j) store(out + e + j * V, even[j] + odd[j]);
}

// out[e] = sum_u w1[u] * v1[u, e] + sum_u w2[u] * v2[u, e]: 32 columns at a time, then 8, then single
inline void weighted_sum(const float* w1, const float* v1, int64_t n1, const float* w2, const float* v2,
                         int64_t n2, int64_t D, float* out) {
  int64_t e = 0;
  for (; e + 4 * V <= D; e += 4 * V) weighted_block<4>(w1, v1, n1, w2, v2, n2, D, e, out);
  for (; e + V <= D; e += V) weighted_block<1>(w1, v1, n1, w2, v2, n2, D, e, out);
  for (; e < D; ++e) {
    float acc = 0.f;
    for (int64_t u = 0; u < n1; ++u) acc += w1[u] * v1[u * D + e];
    for (int64_t u = 0; u < n2; ++u) acc += w2[u] * v2[u * D + e];
    out[e] = acc;
  }
}

// s[0..len) <- softmax(s) in place; len is a multiple of V; -inf lanes become 0
inline void softmax(float* s, int64_t len) {
  v8 m8 = splat(-INFINITY);
  for (int64_t u = 0; u < len; u += V) {
    const v8 x = load(s + u);
    m8 = x > m8 ? x : m8;
  }
  const v8 m = splat(hmax(m8));
  v8 s0 = {}, s1 = {};
  int64_t u = 0;
  for (; u + 2 * V <= len; u += 2 * V) {
    const v8 e0 = exp_v8(load(s + u) - m), e1 = exp_v8(load(s + u + V) - m);
    store(s + u, e0);
    store(s + u + V, e1);
    s0 += e0;
    s1 += e1;
  }
  for (; u < len; u += V) {
    const v8 e0 = exp_v8(load(s + u) - m);
    store(s + u, e0);
    s0 += e0;
  }
  const v8 inv = splat(1.f / hsum(s0 + s1));
  for (u = 0; u < len; u += V) store(s + u, load(s + u) * inv);
}

// Rows per task of a split over rows that each cost ~`per_row` flops: a task below ~32k is not worth a
// fork/join of torch's OpenMP pool (the splits run there when the build has -fopenmp: fused.openmp_flags)
inline int64_t grain(int64_t per_row) { return per_row >= (1 << 15) ? 1 : (1 << 15) / (per_row > 0 ? per_row : 1); }

inline void rms_norm_row(const float* xi, const float* w, float* yi, int64_t C, float eps) {
  float ss = 0.f;
  for (int64_t c = 0; c < C; ++c) ss += xi[c] * xi[c];
  const float r = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
  for (int64_t c = 0; c < C; ++c) yi[c] = (xi[c] * r) * w[c];
}

// (the row functions take their sizes by value rather than through the lambdas' captured references: see
// attend_row)
void rms_norm(const float* x, const float* w, float* y, int64_t n, int64_t C, float eps) {
  at::parallel_for(0, n, grain(3 * C), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) rms_norm_row(x + i * C, w, y + i * C, C, eps);
  });
}

struct Dims {
  int64_t n, H, KV, D, P, T, t;
  float scaling;
};

// RoPE on q and k (in place in qkv), K/V of the new token into the completion cache, then attention
// over the group's prompt and the row's completion, for live row i; writes o[i]. `rot` [D] and `scores`
// [P + T + W] are scratch. Sizes come by value: read through a lambda's captured references they would be
// reloaded after every memcpy (which may alias anything) once parallel_for's body is not inlined (-fopenmp)
inline void attend_row(float* qkv, const float* cos, const float* sin, const int64_t* pos, const int64_t* grp,
                       const int64_t* slot, const int64_t* pstart, const float* kp, const float* vp, float* kc, float* vc, float* o,
                       const Dims d, int64_t i, float* rot, float* scores) {
  const int64_t H = d.H, KV = d.KV, D = d.D, P = d.P, T = d.T, t = d.t, g = H / KV, half = D / 2;
  const int64_t width = (H + 2 * KV) * D;
  float* row = qkv + i * width;
  const float* cs = cos + pos[i] * D;
  const float* sn = sin + pos[i] * D;
  for (int64_t h = 0; h < H + KV; ++h) {  // q heads then k heads
    float* x = row + h * D;
    for (int64_t j = 0; j < half; ++j) {
      rot[j] = x[j] * cs[j] + x[j + half] * sn[j];
      rot[j + half] = x[j + half] * cs[j + half] + x[j] * sn[j + half];
    }
    std::memcpy(x, rot, D * sizeof(float));
  }
  const int64_t b = grp[i], r = slot[i], p0 = pstart[b], tw = (t + W) / W * W;
  for (int64_t kh = 0; kh < KV; ++kh) {
    float* kt = kc + (r * KV + kh) * T * D;  // this row's keys: [T / W, D, W]
    float* vr = vc + (r * KV + kh) * T * D;  // its values: [T, D]
    const float* knew = row + (H + kh) * D;
    float* kslot = kt + (t / W) * D * W + t % W;
    for (int64_t e = 0; e < D; ++e) kslot[e * W] = knew[e];
    std::memcpy(vr + t * D, row + (H + KV + kh) * D, D * sizeof(float));
    const float* kpt = kp + (b * KV + kh) * P * D;  // the prompt's keys: [P / W, D, W]
    const float* vpb = vp + (b * KV + kh) * P * D;
    for (int64_t j = 0; j < g; ++j) {
      const int64_t qh = kh * g + j;
      const float* q = row + qh * D;
      float* sp = scores;  // lanes 0..P-1: prompt positions; P..P+tw-1: completion 0..tw-1
      float* sc = sp + P;
      // whole W-lane chunks of positions, accumulated in registers: no reductions, no tails; lanes
      // past the valid range (padding, stale columns) are masked below
      dot_chunks(q, kpt, P / W, D, d.scaling, sp);
      dot_chunks(q, kt, tw / W, D, d.scaling, sc);
      for (int64_t u = 0; u < p0; ++u) sp[u] = -INFINITY;
      for (int64_t u = t + 1; u < tw; ++u) sc[u] = -INFINITY;
      softmax(sp, P + tw);
      float* out = o + i * H * D + qh * D;
      weighted_sum(sp + p0, vpb + p0 * D, P - p0, sc, vr, t + 1, D, out);
    }
  }
}

// attend_row for the n live rows, split over rows on torch's intra-op pool
void attend(float* qkv, const float* cos, const float* sin, const int64_t* pos, const int64_t* grp,
            const int64_t* slot, const int64_t* pstart, const float* kp, const float* vp, float* kc, float* vc, float* o,
            const Dims& d) {
  at::parallel_for(0, d.n, grain(4 * d.H * (d.P + d.t + W) * d.D), [&](int64_t lo, int64_t hi) {
    std::vector<float> rot(d.D), scores(d.P + d.T + W);
    for (int64_t i = lo; i < hi; ++i)
      attend_row(qkv, cos, sin, pos, grp, slot, pstart, kp, vp, kc, vc, o, d, i, rot.data(), scores.data());
  });
}

inline void silu_mul_row(const float* gate, const float* up, float* ai, int64_t I) {
  int64_t c = 0;
  for (; c + V <= I; c += V) {
    const v8 g = load(gate + c);
    store(ai + c, g / (1.f + exp_v8(-g)) * load(up + c));
  }
  for (; c < I; ++c) ai[c] = gate[c] / (1.f + exp_poly(-gate[c])) * up[c];
}

void silu_mul(const float* gu, float* a, int64_t n, int64_t I) {
  at::parallel_for(0, n, grain(16 * I), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) silu_mul_row(gu + i * 2 * I, gu + i * 2 * I + I, a + i * I, I);
  });
}

// x @ w^T (+ b) (+ residual, in place when w is plain). A weight in MKLDNN layout (prepacked by
// mkldnn::_reorder_linear_weight) runs through oneDNN's linear, which skips re-packing the weight at
// every call; a plain [N, K] weight through at::mm (MKL/BLAS). A bfloat16 prepacked weight (and its bias,
// packed alongside) takes a bfloat16 x and gives a bfloat16 result (decode_step converts around it).
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor* residual) {
  const std::optional<at::Tensor> bias = b.numel() ? std::optional<at::Tensor>(b) : std::nullopt;
  if (w.is_mkldnn()) {
    TORCH_CHECK(x.scalar_type() == w.scalar_type(), "dense: input and prepacked weight dtypes differ");
    if (residual != nullptr) {
      static auto add = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const std::optional<at::Tensor>&, c10::string_view)>();
      return add.call(x, *residual, w, bias, "add");
    }
    static auto plain = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                              c10::string_view, c10::List<std::optional<at::Scalar>>,
                                              std::optional<c10::string_view>)>();
    return plain.call(x, w, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  if (residual == nullptr) return bias ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  residual->addmm_(x, w.t());
  if (bias) residual->add_(*bias);
  return *residual;
}

// A projection: 4 tensors (weight, bias, scale, sub_norm), empty where absent.
// - weight float32 (plain or MKLDNN): `dense`; scale and sub_norm empty.
// - weight uint8: a BitNet b1.58 projection, packed by rollout/ternary.py (2-bit codes, [N, Kp / 4]) with
//   one float32 scale per output row; sub_norm: BitNet's SubLN weight (an RMSNorm of the input before
//   quantising), or empty. Computed by the ternary kernel's own op (reasonloop_ternary::ternary_linear:
//   int8 activations per row by absmax, integer sign/add products, acc * (s_w / s_x) + bias), so its
//   integers are those of the kernel and of bitnet.integer_linear bit for bit; the residual is added after.
at::Tensor project(const at::Tensor& x, const at::Tensor* p, double eps, at::Tensor* residual = nullptr) {
  const at::Tensor& w = p[0];
  if (w.scalar_type() != at::kByte) return dense(x, w, p[1], residual);
  static auto ternary = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("reasonloop_ternary::ternary_linear", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&)>();
  at::Tensor in = x;
  if (p[3].numel()) {  // SubLN
    in = at::empty_like(x);
    rms_norm(x.data_ptr<float>(), p[3].data_ptr<float>(), in.data_ptr<float>(), x.size(0), x.size(1), eps);
  }
  at::Tensor y = ternary.call(in, w, p[2], p[1]);
  if (residual == nullptr) return y;
  residual->add_(y);
  return *residual;
}

inline bf16* bits(const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); }

// A bf16 projection (rollout.decode_precision=bf16) on a float32 input: x rounded to bf16 into `xb` (scratch of
// x's size), the bf16 product widened into a new float32 tensor, or (residual) added to it. The conversions are
// the same roundings as torch's `.to()`, in plain loops: through torch they were ~32 dispatched ops a step.
at::Tensor project_bf16(const at::Tensor& x, const at::Tensor* p, at::Tensor& xb, at::Tensor* residual = nullptr) {
  narrow(x.data_ptr<float>(), bits(xb), x.numel());
  const at::Tensor y = dense(xb, p[0], p[1], nullptr);
  if (residual != nullptr) {
    add_widened(bits(y), residual->data_ptr<float>(), y.numel());
    return *residual;
  }
  at::Tensor out = at::empty(y.sizes(), x.options());
  widen(bits(y), out.data_ptr<float>(), y.numel());
  return out;
}

constexpr int64_t PER_LAYER = 18;  // norm_in, norm_post, then 4 tensors for each of qkv, o, gate|up, down

// layers: per layer PER_LAYER tensors: norm_in, norm_post, qkv (4), o (4), gate|up (4), down (4) (see
// `project`). head: the LM head's 4. kp/vp/kc/vc: one per layer. Returns logits [n, V].
at::Tensor decode_step(const at::Tensor& tokens, const at::Tensor& embed, at::TensorList layers,
                       at::TensorList kp, at::TensorList vp, at::TensorList kc, at::TensorList vc,
                       const at::Tensor& pstart, const at::Tensor& grp, const at::Tensor& slot,
                       const at::Tensor& pos, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& norm_out,
                       at::TensorList head, int64_t heads, int64_t t, double eps, double scaling) {
  TORCH_CHECK(embed.scalar_type() == at::kFloat && embed.is_cpu(), "decode_step: float32 CPU only");
  const int64_t n = tokens.size(0), C = embed.size(1), L = static_cast<int64_t>(kp.size());
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == PER_LAYER * L, "decode_step: ", PER_LAYER, " tensors per layer");
  TORCH_CHECK(head.size() == 4, "decode_step: 4 tensors for the head");
  Dims d{n, heads, vp[0].size(1), vp[0].size(3), vp[0].size(2), vc[0].size(2), t,
         static_cast<float>(scaling)};
  TORCH_CHECK(t < d.T, "decode_step: the completion cache is full");
  TORCH_CHECK(d.P % W == 0 && d.T % W == 0, "decode_step: cache lengths must be multiples of ", W);
  at::Tensor h = at::index_select(embed, 0, tokens);
  at::Tensor x = at::empty_like(h);
  at::Tensor o = at::empty({n, d.H * d.D}, h.options());
  const int64_t* grp_p = grp.data_ptr<int64_t>();
  TORCH_CHECK(slot.scalar_type() == at::kLong && slot.is_contiguous() && slot.numel() == n,
              "decode_step: one int64 cache slot per live row");
  const int64_t* slot_p = slot.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(slot_p[i] >= 0 && slot_p[i] < vc[0].size(0), "decode_step: cache slot out of range");
  const int64_t* pos_p = pos.data_ptr<int64_t>();
  const int64_t* pstart_p = pstart.data_ptr<int64_t>();
  // bf16 projections (all layers are packed alike): bf16 scratch for their inputs, reused by every layer (`ab`,
  // the down projection's, once the MLP width is known)
  const bool low = layers[2].is_mkldnn() && layers[2].scalar_type() == at::kBFloat16;
  const auto half = h.options().dtype(at::kBFloat16);
  at::Tensor xb, ob, ab;
  if (low) {
    xb = at::empty({n, C}, half);
    ob = at::empty({n, d.H * d.D}, half);
  }
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = &layers[PER_LAYER * l];
    rms_norm(h.data_ptr<float>(), w[0].data_ptr<float>(), x.data_ptr<float>(), n, C, eps);
    at::Tensor qkv = low ? project_bf16(x, w + 2, xb) : project(x, w + 2, eps);
    attend(qkv.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), pos_p, grp_p, slot_p, pstart_p,
           kp[l].data_ptr<float>(), vp[l].data_ptr<float>(), kc[l].data_ptr<float>(), vc[l].data_ptr<float>(),
           o.data_ptr<float>(), d);
    h = low ? project_bf16(o, w + 6, ob, &h) : project(o, w + 6, eps, &h);
    rms_norm(h.data_ptr<float>(), w[1].data_ptr<float>(), x.data_ptr<float>(), n, C, eps);
    at::Tensor gu = low ? project_bf16(x, w + 10, xb) : project(x, w + 10, eps);
    const int64_t I = gu.size(1) / 2;
    at::Tensor a = at::empty({n, I}, h.options());
    silu_mul(gu.data_ptr<float>(), a.data_ptr<float>(), n, I);
    if (low && !ab.defined()) ab = at::empty({n, I}, half);
    h = low ? project_bf16(a, w + 14, ab, &h) : project(a, w + 14, eps, &h);
  }
  rms_norm(h.data_ptr<float>(), norm_out.data_ptr<float>(), x.data_ptr<float>(), n, C, eps);
  return project(x, head.data(), eps);
}

// One projection alone (tests: the ternary one against the kernel's reference)
at::Tensor projection(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& s,
                      const at::Tensor& sub, double eps) {
  const at::Tensor p[4] = {w, b, s, sub};
  return project(x.contiguous(), p, eps);
}

// How many OS threads a split of n items (one per task) runs on: torch.get_num_threads() capped at n when the
// build has OpenMP (fused.openmp_flags), 1 without it (tests)
int64_t parallel_threads(int64_t n) {
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(ids.size());
}

}  // namespace

TORCH_LIBRARY(reasonloop_decode, m) {
  m.def("decode_step(Tensor tokens, Tensor embed, Tensor[] layers, Tensor[] kp, Tensor[] vp, Tensor[] kc, "
        "Tensor[] vc, Tensor pstart, Tensor grp, Tensor slot, Tensor pos, Tensor cos, Tensor sin, Tensor norm_out, "
        "Tensor[] head, int heads, int t, float eps, float scaling) -> Tensor",
        &decode_step);  // one kernel for every dispatch key: the weights may be MKLDNN tensors
  m.def("projection(Tensor x, Tensor w, Tensor b, Tensor s, Tensor sub, float eps) -> Tensor", &projection);
  m.def("parallel_threads(int n) -> int", &parallel_threads);
}
