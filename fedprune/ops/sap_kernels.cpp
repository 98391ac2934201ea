// SAP codec kernels for float32 CPU tensors (plugins/components/sap.py's native path).
//
// The pure-torch path computes the very same results; these only make them cheaper:
//
//   fedprune_sap::kth(x, k)        the k-th smallest |x| (1-based), a radix select on the bit
//                                  patterns of |x| (NaN above +inf, as in torch.kthvalue)
//   fedprune_sap::sample_kth(x, sample, seed, k)
//                                  the same over |x| at sample_positions(n, sample, seed)
//   fedprune_sap::encode(x, t)     (values, packed): keep = !(|x| <= t) (NaN is kept, as
//                                  hardshrink keeps it); values in entry order; packed is the
//                                  keep-mask in fedprune.ops.bits' planar layout
//   fedprune_sap::decode(v, p, n)  x~: the kept values at their entries, 0 elsewhere
//   fedprune_sap::shrink_(x, t)    x~ in place: hardshrink(x, t) written into x
//
// Planar layout: with m = ceil(n / 8), bit i of byte j is entry i * m + j. Entries are processed
// 8 at a time; the 8 bits of entries i*m + j .. i*m + j + 7 sit at bit i of bytes j .. j + 7.
// AVX2 code is compiled with a target attribute and chosen at run time, so the build needs no
// -march flag and runs on any x86-64 (and elsewhere, scalar).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SAP_X86 1
#endif

namespace {

constexpr int64_t BLOCK = 8192;  // mask bytes per parallel task (8 planes x 8192 entries)
constexpr uint64_t LOW_BITS = 0x0101010101010101ULL;

struct Tables {
  uint64_t spread[256];            // bit i of b -> bit 0 of byte i
  alignas(32) int32_t pack[256][8];    // lanes to gather, kept lanes first
  alignas(32) int32_t expand[256][8];  // for lane i: rank of bit i among the set bits
  Tables() {
    for (int b = 0; b < 256; ++b) {
      spread[b] = 0;
      int r = 0;
      for (int i = 0; i < 8; ++i) pack[b][i] = expand[b][i] = 0;
      for (int i = 0; i < 8; ++i) {
        if (b >> i & 1) {
          spread[b] |= 1ULL << (8 * i);
          pack[b][r] = i;
          expand[b][i] = r++;
        }
      }
    }
  }
};
const Tables T;

// Bit p of bytes j .. j + 7 (the little-endian word w) as one byte, entry order.
inline uint32_t gather_bits(uint64_t w, int p) {
  return static_cast<uint32_t>((((w >> p) & LOW_BITS) * 0x0102040810204080ULL) >> 56);
}

inline uint64_t load_word(const uint8_t* bytes, int64_t j, int64_t m) {
  uint64_t w = 0;
  std::memcpy(&w, bytes + j, static_cast<size_t>(std::min<int64_t>(8, m - j)));
  return w;
}

inline bool keep(float v, float t) { return !(std::fabs(v) <= t); }

inline uint32_t keep_bits(const float* x, int64_t e, int64_t n, float t) {
  uint32_t bits = 0;
  for (int i = 0; i < 8 && e + i < n; ++i) bits |= static_cast<uint32_t>(keep(x[e + i], t)) << i;
  return bits;
}

#ifdef SAP_X86
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

__attribute__((target("avx2"))) inline uint32_t keep_bits8_avx2(const float* x, __m256 vt) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x), absmask);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_NLE_UQ)));
}

// Pass 1 over one block of mask bytes: writes them, counts kept entries per plane.
__attribute__((target("avx2"))) void mask_block_avx2(const float* x, uint8_t* out, int64_t n,
                                                     int64_t m, int64_t j0, int64_t j1, float t,
                                                     int64_t* counts) {
  const __m256 vt = _mm256_set1_ps(t);
  for (int64_t j = j0; j < j1; j += 8) {
    uint64_t word = 0;
    for (int p = 0; p < 8; ++p) {
      const int64_t e = p * m + j;
      const bool full = j + 8 <= j1 && e + 8 <= n;
      const uint32_t bits = full ? keep_bits8_avx2(x + e, vt)
                                 : keep_bits(x, e, std::min(n, p * m + j1), t);
      word |= T.spread[bits] << p;
      counts[p] += __builtin_popcount(bits);
    }
    std::memcpy(out + j, &word, static_cast<size_t>(std::min<int64_t>(8, j1 - j)));
  }
}

__attribute__((target("avx2"))) void compact_avx2(const float* x, float* v, uint32_t bits) {
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.pack[bits]));
  _mm256_storeu_ps(v, _mm256_permutevar8x32_ps(_mm256_loadu_ps(x), perm));
}

__attribute__((target("avx2"))) void expand_avx2(const float* v, float* out, uint32_t bits) {
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.expand[bits]));
  const __m256i lanes = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)),
                                         _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128));
  const __m256 dropped = _mm256_castsi256_ps(_mm256_cmpeq_epi32(lanes, _mm256_setzero_si256()));
  _mm256_storeu_ps(out, _mm256_andnot_ps(dropped, _mm256_permutevar8x32_ps(_mm256_loadu_ps(v),
                                                                           perm)));
}
#else
bool has_avx2() { return false; }
#endif

void mask_block(const float* x, uint8_t* out, int64_t n, int64_t m, int64_t j0, int64_t j1,
                float t, int64_t* counts) {
#ifdef SAP_X86
  if (has_avx2()) return mask_block_avx2(x, out, n, m, j0, j1, t, counts);
#endif
  for (int64_t j = j0; j < j1; j += 8) {
    uint64_t word = 0;
    for (int p = 0; p < 8; ++p) {
      const uint32_t bits = keep_bits(x, p * m + j, std::min(n, p * m + j1), t);
      word |= T.spread[bits] << p;
      counts[p] += __builtin_popcount(bits);
    }
    std::memcpy(out + j, &word, static_cast<size_t>(std::min<int64_t>(8, j1 - j)));
  }
}

struct Grid {
  int64_t n, m, blocks;
  explicit Grid(int64_t n_) : n(n_), m((n_ + 7) / 8), blocks(std::max<int64_t>(1, (m + BLOCK - 1) / BLOCK)) {}
  // Task c = p * blocks + b covers entries p * m + [j0, j1): tasks in entry order.
  int64_t j0(int64_t b) const { return b * BLOCK; }
  int64_t j1(int64_t b) const { return std::min(m, (b + 1) * BLOCK); }
};

// Entry ranges of each task, in entry order, as a running sum of per-task counts.
void exclusive_scan(std::vector<int64_t>& counts) {
  int64_t sum = 0;
  for (auto& c : counts) {
    const int64_t here = c;
    c = sum;
    sum += here;
  }
}

// The (r + 1)-th smallest key: most significant digit first (11 + 11 + 10 bits), one counting
// pass per digit over the keys still in the running.
float radix_select(std::vector<uint32_t>& keys, int64_t r) {
  static const int shifts[3] = {21, 10, 0};
  static const int widths[3] = {11, 11, 10};
  uint32_t prefix = 0, fixed = 0;
  std::vector<int64_t> hist;
  for (int d = 0; d < 3; ++d) {
    const uint32_t digit_mask = (1u << widths[d]) - 1;
    hist.assign(static_cast<size_t>(digit_mask) + 1, 0);
    for (uint32_t key : keys) hist[(key >> shifts[d]) & digit_mask]++;
    uint32_t digit = 0;
    while (r >= hist[digit]) r -= hist[digit++];
    prefix |= digit << shifts[d];
    fixed |= digit_mask << shifts[d];
    if (d < 2) {
      size_t kept = 0;
      for (uint32_t key : keys) if ((key & fixed) == prefix) keys[kept++] = key;
      keys.resize(kept);
    }
  }
  float t;
  std::memcpy(&t, &prefix, sizeof t);
  return t;
}

// For non-negative floats the bit order is the value order; NaNs sort above +inf.
inline uint32_t abs_key(const float* x, int64_t i) {
  uint32_t bits;
  std::memcpy(&bits, x + i, sizeof bits);
  return bits & 0x7FFFFFFFu;
}

void check_float(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), what,
              ": a contiguous float32 CPU tensor");
}

double sap_kth(const at::Tensor& x, int64_t k) {
  check_float(x, "kth");
  const int64_t n = x.numel();
  TORCH_CHECK(k >= 1 && k <= n, "kth: k out of range");
  const float* px = x.data_ptr<float>();
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) keys[i] = abs_key(px, i);
  return radix_select(keys, k - 1);
}

// sample_positions of plugins/components/sap.py: position i lies in the i-th of `sample` spans,
// [i * n / sample, (i + 1) * n / sample), at an offset from a 32-bit hash of (i, seed). Unsigned
// 64-bit arithmetic never wraps here (the caller keeps n * sample < 2**63, n / sample < 2**31
// and sample < 2**24), so torch's int64 ops agree. Span bounds are stepped without division.
inline uint64_t offset_hash(uint64_t i, uint64_t seed) {
  constexpr uint64_t M32 = 0xFFFFFFFFULL;
  uint64_t h = (i * 0x9E3779B1ULL + seed) & M32;
  h = ((h ^ (h >> 16)) * 0x45D9F3BULL) & M32;
  h = ((h ^ (h >> 16)) * 0x45D9F3BULL) & M32;
  return h ^ (h >> 16);
}

double sap_sample_kth(const at::Tensor& x, int64_t sample, int64_t seed, int64_t k) {
  check_float(x, "sample_kth");
  const int64_t n = x.numel();
  TORCH_CHECK(sample >= 1 && sample < (1 << 24) && n >= sample && k >= 1 && k <= sample,
              "sample_kth: bad sample or k");
  const float* px = x.data_ptr<float>();
  std::vector<uint32_t> keys(static_cast<size_t>(sample));
  const uint64_t q = n / sample, r = n % sample;
  uint64_t start = 0, carry = 0;  // start = i * n / sample, carry = i * r % sample
  for (int64_t i = 0; i < sample; ++i) {
    carry += r;
    const uint64_t next = start + q + (carry >= static_cast<uint64_t>(sample));
    if (carry >= static_cast<uint64_t>(sample)) carry -= sample;
    keys[i] = abs_key(px, static_cast<int64_t>(start + ((offset_hash(i, seed) * (next - start)) >> 32)));
    start = next;
  }
  return radix_select(keys, k - 1);
}

std::tuple<at::Tensor, at::Tensor> sap_encode(const at::Tensor& x, double threshold) {
  check_float(x, "encode");
  const Grid g(x.numel());
  const float t = static_cast<float>(threshold);
  const float* px = x.data_ptr<float>();
  at::Tensor packed = at::empty({g.m}, x.options().dtype(at::kByte));
  uint8_t* pb = packed.data_ptr<uint8_t>();
  std::vector<int64_t> starts(static_cast<size_t>(8 * g.blocks + 1), 0);
  at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t counts[8] = {0};
      mask_block(px, pb, g.n, g.m, g.j0(b), g.j1(b), t, counts);
      for (int p = 0; p < 8; ++p) starts[p * g.blocks + b] = counts[p];
    }
  });
  exclusive_scan(starts);
  const int64_t k = starts.back();
  at::Tensor values = at::empty({k}, x.options());
  float* pv = values.data_ptr<float>();
  at::parallel_for(0, 8 * g.blocks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int p = static_cast<int>(c / g.blocks);
      const int64_t b = c % g.blocks, j1 = g.j1(b);
      int64_t pos = starts[c];
      const int64_t end = starts[c + 1];
      for (int64_t j = g.j0(b); j < j1 && pos < end; j += 8) {
        const int64_t e = p * g.m + j;
        const uint32_t bits = gather_bits(load_word(pb, j, g.m), p);
        if (bits == 0) continue;
#ifdef SAP_X86
        if (has_avx2() && pos + 8 <= end && e + 8 <= g.n) {  // writes inside this task's range
          compact_avx2(px + e, pv + pos, bits);
          pos += __builtin_popcount(bits);
          continue;
        }
#endif
        for (int i = 0; i < 8; ++i) if (bits >> i & 1) pv[pos++] = px[e + i];
      }
    }
  });
  return {values, packed};
}

at::Tensor sap_decode(const at::Tensor& values, const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kFloat &&
                  values.is_contiguous(), "sap_decode: contiguous float32 CPU values");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.numel() == (n + 7) / 8, "sap_decode: a packed mask of ceil(n / 8) bytes");
  const Grid g(n);
  const uint8_t* pb = packed.data_ptr<uint8_t>();
  const float* pv = values.data_ptr<float>();
  at::Tensor out = at::empty({n}, values.options());
  float* po = out.data_ptr<float>();
  std::vector<int64_t> starts(static_cast<size_t>(8 * g.blocks + 1), 0);
  at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t counts[8] = {0};
      for (int64_t j = g.j0(b); j < g.j1(b); j += 8) {
        const uint64_t w = load_word(pb, j, g.m);
        for (int p = 0; p < 8; ++p) counts[p] += __builtin_popcountll((w >> p) & LOW_BITS);
      }
      for (int p = 0; p < 8; ++p) starts[p * g.blocks + b] = counts[p];
    }
  });
  exclusive_scan(starts);
  const int64_t k = values.numel();
  TORCH_CHECK(starts.back() == k, "sap_decode: the mask keeps ", starts.back(),
              " entries, there are ", k, " values");
  at::parallel_for(0, 8 * g.blocks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int p = static_cast<int>(c / g.blocks);
      const int64_t b = c % g.blocks, j1 = g.j1(b);
      int64_t pos = starts[c];
      for (int64_t j = g.j0(b); j < j1; j += 8) {
        const int64_t e = p * g.m + j;
        if (e >= n) break;
        const uint32_t bits = gather_bits(load_word(pb, j, g.m), p);
        const int64_t width = std::min<int64_t>({8, g.m - j, n - e});  // entries of this plane
#ifdef SAP_X86
        if (has_avx2() && width == 8 && pos + 8 <= k) {  // reads values pos .. pos + 7 only
          expand_avx2(pv + pos, po + e, bits);
          pos += __builtin_popcount(bits);
          continue;
        }
#endif
        for (int i = 0; i < width; ++i) po[e + i] = bits >> i & 1 ? pv[pos++] : 0.0f;
      }
    }
  });
  return out;
}

at::Tensor sap_shrink_(at::Tensor x, double threshold) {
  check_float(x, "shrink_");
  const float t = static_cast<float>(threshold);
  float* px = x.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) px[i] = keep(px[i], t) ? px[i] : 0.0f;
  });
  return x;
}

}  // namespace

TORCH_LIBRARY(fedprune_sap, m) {
  m.def("kth(Tensor x, int k) -> float", &sap_kth);
  m.def("sample_kth(Tensor x, int sample, int seed, int k) -> float", &sap_sample_kth);
  m.def("encode(Tensor x, float t) -> (Tensor, Tensor)", &sap_encode);
  m.def("decode(Tensor values, Tensor packed, int n) -> Tensor", &sap_decode);
  m.def("shrink_(Tensor(a!) x, float t) -> Tensor(a!)", &sap_shrink_);
}
