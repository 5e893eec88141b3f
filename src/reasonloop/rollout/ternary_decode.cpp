// BitNet b1.58 linear layers for CPU decoding: int8 activations times ternary weights, no multiplies
// in the inner loop (models/bitnet.py has the maths; rollout/ternary.py builds and calls this file).
//
// Packed weights (ternary.pack): uint8 [N, Kp / 4], Kp = K rounded up to a multiple of 128. Each output
// row is a run of 128-weight blocks of 32 bytes; byte j of a block holds the weights k = 32 i + j of the
// block (i = 0..3) in bits 2i..2i+1, as the code w + 1 in {0, 1, 2} (padding: code 1, weight 0). So one
// 32-byte load, shifted by 0, 2, 4, 6 and masked, gives four vectors of 32 *consecutive* weights.
//
// Product: the codes c = w + 1 in {0, 1, 2} times the activations, 32 pairs at a time summed into
// int16 (vpmaddubsw: unsigned codes times signed bytes; a "multiply" by 0, 1 or 2), the four vectors of
// a block added in int16 (at most 4 * 2 * 2 * 128 per lane), widened to int32 once per block (vpmaddwd
// with ones) and accumulated; sum c x = sum w x + sum x, so the exact product is the sum minus the
// activation row's own sum, computed once per call (bitnet.cpp's I2_S kernel does the same). An
// earlier version used the byte sign operation (vpsignb: x, -x or 0) on decoded weights instead: 1.2-1.6x
// slower at one row (docs/bitnet.md). The scalar fallback (no AVX2) computes the same integers with adds
// and subtracts.
//
// Integer results equal the reference (bitnet.integer_linear) exactly; the float wrapper quantises
// activations with torch's operations in torch's order (scale = (1 / max(absmax, eps)) * 127, round
// half to even) so its codes match `bitnet.quantize_activations` bit for bit, and dequantises as
// `bitnet.dequantize`: acc * (s_w / s_x).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 128;     // weights per packed block
constexpr int64_t BLOCK_BYTES = 32;
constexpr int64_t TILE = 8;        // activation rows sharing one decode of a weight block
constexpr float EPS = 1e-5f;

#if defined(__AVX2__)
inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// acc[t] = sum_k x[t, k] * w[k] for t < R (<= TILE), one packed weight row; xsum[t] = sum_k x[t, k].
// The codes c = w + 1 in {0, 1, 2} multiply the activations directly (vpmaddubsw: unsigned codes times
// signed activations, pairs summed into int16, at most 2 * 2 * 127 per pair), so sum_k c_k x_k =
// sum_k w_k x_k + sum_k x_k and the exact product is that minus xsum: no sign step, no code decoding
// beyond a shift and a mask (the trick of bitnet.cpp's I2_S kernel). R is a template argument so that
// the R accumulators stay in registers (indexed by a run-time count they lived on the stack).
template <int R>
inline void dot_rows(const int8_t* x, int64_t ldx, const uint8_t* w, int64_t blocks, const int32_t* xsum,
                     int32_t* acc) {
  const __m256i mask = _mm256_set1_epi8(3), one16 = _mm256_set1_epi16(1);
  __m256i a[R];
  for (int t = 0; t < R; ++t) a[t] = _mm256_setzero_si256();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * BLOCK_BYTES));
    const __m256i c0 = _mm256_and_si256(bytes, mask);
    const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(bytes, 2), mask);
    const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
    const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(bytes, 6), mask);
    for (int t = 0; t < R; ++t) {
      const int8_t* xb = x + t * ldx + b * BLOCK;
      const __m256i p0 = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)));
      const __m256i p1 = _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32)));
      const __m256i p2 = _mm256_maddubs_epi16(c2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64)));
      const __m256i p3 = _mm256_maddubs_epi16(c3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 96)));
      const __m256i s = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));  // |s| <= 2032
      a[t] = _mm256_add_epi32(a[t], _mm256_madd_epi16(s, one16));
    }
  }
  for (int t = 0; t < R; ++t) acc[t] = hsum(a[t]) - xsum[t];
}

inline void dot_row(const int8_t* x, int64_t ldx, int64_t rows, const uint8_t* w, int64_t blocks,
                    const int32_t* xsum, int32_t* acc) {
  switch (rows) {
    case 1: return dot_rows<1>(x, ldx, w, blocks, xsum, acc);
    case 2: return dot_rows<2>(x, ldx, w, blocks, xsum, acc);
    case 3: return dot_rows<3>(x, ldx, w, blocks, xsum, acc);
    case 4: return dot_rows<4>(x, ldx, w, blocks, xsum, acc);
    case 5: return dot_rows<5>(x, ldx, w, blocks, xsum, acc);
    case 6: return dot_rows<6>(x, ldx, w, blocks, xsum, acc);
    case 7: return dot_rows<7>(x, ldx, w, blocks, xsum, acc);
    default: return dot_rows<TILE>(x, ldx, w, blocks, xsum, acc);
  }
}
#else
inline void dot_row(const int8_t* x, int64_t ldx, int64_t rows, const uint8_t* w, int64_t blocks,
                    const int32_t* /*xsum*/, int32_t* acc) {
  for (int64_t t = 0; t < rows; ++t) acc[t] = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + b * BLOCK_BYTES;
    for (int64_t t = 0; t < rows; ++t) {
      const int8_t* xb = x + t * ldx + b * BLOCK;
      int32_t s = 0;
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < BLOCK_BYTES; ++j) {
          const int code = (wb[j] >> (2 * i)) & 3;
          const int32_t v = xb[32 * i + j];
          s += code == 2 ? v : (code == 0 ? -v : 0);
        }
      acc[t] += s;
    }
  }
}
#endif

// Output rows lo..hi of `gemm`. Everything comes by value (emit too, capturing by value): read through
// parallel_for's captured references, the sizes and pointers would be reloaded after every call of the
// out-of-line dot_row once that body stops being inlined (the -fopenmp build), ~5% at one row
template <typename Emit>
void gemm_rows(const int8_t* xq, int64_t n, int64_t kp, const uint8_t* packed, const int32_t* xsum, int64_t lo,
               int64_t hi, Emit emit) {
  const int64_t blocks = kp / BLOCK;
  int32_t acc[TILE];
  for (int64_t t0 = 0; t0 < n; t0 += TILE) {
    const int64_t rows = n - t0 < TILE ? n - t0 : TILE;
    for (int64_t j = lo; j < hi; ++j) {
      dot_row(xq + t0 * kp, kp, rows, packed + j * (kp / 4), blocks, xsum + t0, acc);
      for (int64_t t = 0; t < rows; ++t) emit(t0 + t, j, acc[t]);
    }
  }
}

// out[i, j] = sum_k xq[i, k] * W[j, k], calling emit(i, j, acc) for each; parallel over output rows
template <typename Emit>
void gemm(const int8_t* xq, int64_t n, int64_t kp, const uint8_t* packed, int64_t N, Emit emit) {
  std::vector<int32_t> xsum(n);  // sum_k x[i, k] (the padding is zero), for the code-times-activation form
  for (int64_t i = 0; i < n; ++i) {
    int32_t sum = 0;
    for (int64_t k = 0; k < kp; ++k) sum += xq[i * kp + k];
    xsum[i] = sum;
  }
  const int32_t* xs = xsum.data();
  at::parallel_for(0, N, 16, [&](int64_t lo, int64_t hi) { gemm_rows(xq, n, kp, packed, xs, lo, hi, emit); });
}

void check_packed(const at::Tensor& packed, int64_t kp) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
              "ternary: packed weights must be a contiguous uint8 [N, Kp / 4] tensor");
  TORCH_CHECK(kp % BLOCK == 0 && packed.size(1) * 4 == kp, "ternary: activations have ", kp,
              " columns, the packed weights ", packed.size(1) * 4, " (both padded to a multiple of ", BLOCK, ")");
}

// the exact integer products: xq int8 [n, Kp] (zero-padded), packed [N, Kp / 4] -> int32 [n, N]
at::Tensor ternary_gemm(const at::Tensor& xq, const at::Tensor& packed) {
  TORCH_CHECK(xq.scalar_type() == at::kChar && xq.dim() == 2, "ternary_gemm: int8 [n, Kp] activations");
  const at::Tensor x = xq.contiguous();
  const int64_t n = x.size(0), kp = x.size(1), N = packed.size(0);
  check_packed(packed, kp);
  at::Tensor out = at::empty({n, N}, x.options().dtype(at::kInt));
  int32_t* o = out.data_ptr<int32_t>();
  gemm(x.data_ptr<int8_t>(), n, kp, packed.data_ptr<uint8_t>(), N,
       [=](int64_t i, int64_t j, int32_t a) { o[i * N + j] = a; });
  return out;
}

// per-row absmax int8 quantisation of x [n, K] into xq [n, Kp] (zero padding) and the scales s [n],
// with torch's arithmetic: s = (1 / max(absmax, eps)) * 127, q = clamp(round_half_even(x * s), -128, 127)
inline float quantize_row(const float* xi, int64_t K, int64_t kp, int8_t* qi) {
  // K and kp are arguments, not captures: read through a lambda's captured references they would be
  // reloaded after every int8 store (a char store may alias anything) and the loop would not vectorise
  // (5% of a BitNet decode step once parallel_for's body stopped being inlined: the -fopenmp build)
  float m = 0.f;
  for (int64_t k = 0; k < K; ++k) m = std::fabs(xi[k]) > m ? std::fabs(xi[k]) : m;
  const float scale = (1.f / (m > EPS ? m : EPS)) * 127.f;
  for (int64_t k = 0; k < K; ++k) {
    float q = std::nearbyint(xi[k] * scale);
    q = q < -128.f ? -128.f : (q > 127.f ? 127.f : q);
    qi[k] = static_cast<int8_t>(q);
  }
  std::memset(qi + K, 0, kp - K);
  return scale;
}

void quantize(const float* x, int64_t n, int64_t K, int64_t kp, int8_t* xq, float* s) {
  // rows per task: ~8k elements at least (a few microseconds), or a fork/join of torch's OpenMP pool costs
  // more than the split saves
  at::parallel_for(0, n, (1 << 13) / (K > 0 ? K : 1) + 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) s[i] = quantize_row(x + i * K, K, kp, xq + i * kp);
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, int64_t kp) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "quantize_rows: float32 [n, K]");
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.size(0), K = xc.size(1);
  TORCH_CHECK(kp >= K, "quantize_rows: Kp < K");
  at::Tensor xq = at::empty({n, kp}, xc.options().dtype(at::kChar));
  at::Tensor s = at::empty({n, 1}, xc.options());
  quantize(xc.data_ptr<float>(), n, K, kp, xq.data_ptr<int8_t>(), s.data_ptr<float>());
  return {xq, s};
}

// y [n, N] = dequantised (quantise(x) . W^T) (+ bias): x float32 [n, K]; scale float32 [N] (s_w of the
// tensor each output row belongs to); bias float32 [N] or empty
at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const at::Tensor& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2, "ternary_linear: float32 [n, K] activations");
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.size(0), K = xc.size(1), N = packed.size(0), kp = (K + BLOCK - 1) / BLOCK * BLOCK;
  check_packed(packed, kp);
  TORCH_CHECK(scale.numel() == N && (bias.numel() == 0 || bias.numel() == N), "ternary_linear: scale/bias size");
  std::vector<int8_t> xq(n * kp);
  std::vector<float> sx(n);
  quantize(xc.data_ptr<float>(), n, K, kp, xq.data(), sx.data());
  at::Tensor out = at::empty({n, N}, xc.options());
  float* o = out.data_ptr<float>();
  const float* sw = scale.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const float* sxp = sx.data();
  gemm(xq.data(), n, kp, packed.data_ptr<uint8_t>(), N, [=](int64_t i, int64_t j, int32_t a) {
    const float y = static_cast<float>(a) * (sw[j] / sxp[i]);
    o[i * N + j] = b ? y + b[j] : y;
  });
  return out;
}

// How many OS threads a split of n items (one per task) runs on (tests: torch's intra-op pool when built with
// -fopenmp, fused.openmp_flags; 1 at torch.set_num_threads(1))
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

TORCH_LIBRARY(reasonloop_ternary, m) {
  m.def("ternary_gemm(Tensor xq, Tensor packed) -> Tensor", &ternary_gemm);
  m.def("quantize_rows(Tensor x, int kp) -> (Tensor, Tensor)", &quantize_rows);
  m.def("ternary_linear(Tensor x, Tensor packed, Tensor scale, Tensor bias) -> Tensor", &ternary_linear);
  m.def("parallel_threads(int n) -> int", &parallel_threads);
}
