// Flash attention on the CPU: the forward and backward of deepnotes/attention/blockwise.py for the
// plain case and bool masks (no additive bias, ALiBi, window, softcap or dropout; causal or not; GQA), in
// float32 or float64, with the same base-2 conventions:
//
//   S2 = (c Q) K^T,  c = log2(e) * scale  (c Q rounded once, as blockwise.py's q.mul(c), per block here)
//   forward:  m = rowmax S2 (log2 units),  l = rowsum 2^(S2 - m),  O = 2^(S2 - m) V / l,
//             LSE = ln 2 (m + log2 l); a row that sees no key: O = 0, m = +inf, l = 0, LSE = +inf
//   backward: E = 2^(S2 - m),  dO' = dO / max(l, 1),  D' = rowsum(dO' o O)
//             dV += E^T dO',  dS = E o (dO' V^T - D'),  dQ += dS K,  dK += dS^T (c Q),
//             then dQ x scale and dK x ln 2, as blockwise.py does, over the tiles of its plan
//             (block_q x block_k, given by the caller: the GEMMs reduce over the same lengths);
//             when one tile holds all keys (block_k >= Sk) D' = rowsum(E o dO' V^T) / max(l, 1)
//             from that tile, as blockwise.py does then (rowsum(dS) = 0 to rounding; a single
//             visible key gets dK = 0 exactly)
//
// causal is bottom-right aligned: query i sees keys j <= i + Sk - Sq.
// With a bool mask (True = attend, broadcast over batch/head/rows/keys through zero strides) the
// call is tile-mapped: forward and backward run over the tiles of tiles.py's plan for that mask
// (block_q x block_k and a class per tile, the union over batches and heads): an EMPTY tile is
// never computed, a FULL one is computed with no masking work, a PARTIAL one sets its hidden
// scores to -inf (forward) and its hidden E to 0 (backward), as blockwise.py does.
// The loop structure is torch's own CPU flash kernel's: the forward runs one parallel loop
// over (batch, head, query block) with an inner loop over key blocks, an online softmax
// between a QK^T GEMM and a PV GEMM; the backward runs one parallel loop over (batch, kv
// head), each worker owning that head's dK, dV (and the dQ of its G query heads), so no two
// threads write the same memory and results do not depend on the thread count; only with
// fewer (batch, kv head) pairs than threads (MQA/GQA at small batch) it runs one item per
// query head with private dK, dV partials, summed over the group afterwards (the same sums
// in another rounding order).
// GEMMs are BLAS sgemm_/dgemm_ (MKL inside libtorch_cpu; inside the parallel region
// they run single-threaded). Build flags: deepnotes/attention/_compiled.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

// Column-major BLAS GEMM: C (m x n, ldc) = alpha op(A) op(B) + beta C.
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int M = m, N = n, K = k, LDA = lda, LDB = ldb, LDC = ldc;
  sgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LDA, b, &LDB, &beta, c, &LDC);
}
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                 const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  const int M = m, N = n, K = k, LDA = lda, LDB = ldb, LDC = ldc;
  dgemm_(&ta, &tb, &M, &N, &K, &alpha, a, &LDA, b, &LDB, &beta, c, &LDC);
}

// Row-major helpers (the tensors are row-major):
// C (r x c) = alpha A (r x k) B^T (c x k rows) + beta C
template <typename T>
inline void mm_abt(int64_t r, int64_t c, int64_t k, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
                   T beta, T* C, int64_t ldc) {
  gemm('T', 'N', c, r, k, alpha, B, ldb, A, lda, beta, C, ldc);
}
// C (r x c) = alpha A (r x k) B (k x c) + beta C
template <typename T>
inline void mm_ab(int64_t r, int64_t c, int64_t k, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
                  T beta, T* C, int64_t ldc) {
  gemm('N', 'N', c, r, k, alpha, B, ldb, A, lda, beta, C, ldc);
}
// C (r x c) += alpha A^T B, A (k x r), B (k x c)
template <typename T>
inline void mm_atb_acc(int64_t r, int64_t c, int64_t k, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
                       T* C, int64_t ldc) {
  gemm('N', 'T', c, r, k, alpha, B, ldb, A, lda, T(1), C, ldc);
}

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// 2^x for float, vectorisable (no libm call): x = n + f, |f| <= 1/2, 2^f by its Taylor series in
// f ln 2 to degree 6 (truncation error < 1.2e-7 relative, about one ulp), 2^n by the
// exponent bits. x <= -127 (and -inf) gives 0; x is at most slightly above 0 here (scores minus
// their row max, recomputed in the backward).
inline float exp2_f(float x) {
  x = std::max(x, -127.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x + shifter;
  const int32_t n = static_cast<int32_t>(bits_of(t) - bits_of(shifter));
  const float f = x - (t - shifter);
  // sum_k (ln 2)^k / k! f^k, k <= 6
  float p = 1.540353039e-04f;
  p = p * f + 1.333355815e-03f;
  p = p * f + 9.618129108e-03f;
  p = p * f + 5.550410866e-02f;
  p = p * f + 2.402265070e-01f;
  p = p * f + 6.931471806e-01f;
  p = p * f + 1.0f;
  const float scale = float_of(static_cast<uint32_t>(std::max(n + 127, 0)) << 23);
  return p * scale;
}

template <typename T>
inline T exp2_t(T x);
template <>
inline float exp2_t<float>(float x) { return exp2_f(x); }
template <>
inline double exp2_t<double>(double x) { return std::exp2(x); }

// Query rows of a forward work item: torch's choice (fewer, larger GEMMs for long queries).
inline int64_t fwd_block_q(int64_t Sq) { return Sq >= 768 ? 256 : (Sq >= 192 ? 64 : 32); }
constexpr int64_t kBlockK = 512;  // keys of a tile
// max of x[0:n] (-inf for n = 0) over 64-byte vectors (GCC/Clang vector extensions: one vector
// max instruction per step, where a plain max reduction stays a scalar dependency chain).
template <typename T>
inline T row_max(const T* x, int64_t n) {
  constexpr int kLanes = 64 / sizeof(T);
  typedef T vec __attribute__((vector_size(64)));
  const T ninf = -std::numeric_limits<T>::infinity();
  vec acc;
  for (int u = 0; u < kLanes; ++u) acc[u] = ninf;
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    vec xv;
    std::memcpy(&xv, x + c, sizeof xv);
    acc = xv > acc ? xv : acc;
  }
  T mx = ninf;
  for (int u = 0; u < kLanes; ++u) mx = acc[u] > mx ? acc[u] : mx;
  for (; c < n; ++c) mx = x[c] > mx ? x[c] : mx;
  return mx;
}


// A 64-byte aligned scratch array (whole cache lines; aligned vector loads and GEMM output rows).
template <typename T>
struct Scratch {
  T* p;
  explicit Scratch(int64_t n) : p(static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64))) {
    TORCH_CHECK(p != nullptr, "flash_cpu: out of memory");
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p; }
};

// The tile map of a masked call (tiles.py's plan: EMPTY 0 / PARTIAL 1 / FULL 2 per (query tile, key
// tile), the union over batches and heads) and its bool mask, read through its strides (0 along a
// broadcast dimension). cls == nullptr: the dense case (the causal band by row arithmetic).
struct Tiling {
  const uint8_t* cls = nullptr;
  int64_t n_c = 0, bq = 0, bk = 0;
  const bool* mask = nullptr;
  int64_t sb = 0, sh = 0, sq = 0, sk = 0;
  bool tiled() const { return cls != nullptr; }
  uint8_t at(int64_t i, int64_t j) const { return cls[i * n_c + j]; }
  const bool* row(int64_t b, int64_t h, int64_t i, int64_t c0) const { return mask + b * sb + h * sh + i * sq + c0 * sk; }
};
constexpr uint8_t kEmpty = 0, kPartial = 1;

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, double scale2,
                  const Tiling& t, at::Tensor& o, at::Tensor& m, at::Tensor& l, at::Tensor& lse) {
  const T c2 = static_cast<T>(scale2);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Sk = k.size(2), Dv = v.size(3), G = H / Hkv;
  const int64_t off = Sk - Sq;
  const int64_t kBlockQ = t.tiled() ? t.bq : fwd_block_q(Sq);
  const int64_t kBlockKey = t.tiled() ? t.bk : kBlockK;
  const int64_t n_qb = (Sq + kBlockQ - 1) / kBlockQ;
  const T* qp = q.const_data_ptr<T>();
  const T* kp = k.const_data_ptr<T>();
  const T* vp = v.const_data_ptr<T>();
  T* op = o.mutable_data_ptr<T>();
  T* mp = m.mutable_data_ptr<T>();
  T* lp = l.mutable_data_ptr<T>();
  T* lsep = lse.mutable_data_ptr<T>();
  const T inf = std::numeric_limits<T>::infinity();
  const T ln2 = static_cast<T>(0.693147180559945309417232121458176568);

  at::parallel_for(0, B * H * n_qb, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> S(kBlockQ * kBlockKey), qbuf(kBlockQ * D);
    std::vector<T> mrow(kBlockQ), lrow(kBlockQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / n_qb, qb = item % n_qb;
      const int64_t b = bh / H, h = bh % H, hk = h / G;
      const int64_t r0 = qb * kBlockQ, r1 = std::min(Sq, r0 + kBlockQ), br = r1 - r0;
      const T* qsrc = qp + (bh * Sq + r0) * D;
      T* qi = qbuf.data();
#pragma omp simd
      for (int64_t x = 0; x < br * D; ++x) qi[x] = qsrc[x] * c2;
      const T* kh = kp + (b * Hkv + hk) * Sk * D;
      const T* vh = vp + (b * Hkv + hk) * Sk * Dv;
      T* oi = op + (bh * Sq + r0) * Dv;
      T* mi = mp + bh * Sq + r0;
      T* li = lp + bh * Sq + r0;
      T* lsei = lsep + bh * Sq + r0;
      // keys 0 .. kend-1 are seen by some row of the block (a tiled call skips its EMPTY tiles instead)
      const int64_t kend = causal && !t.tiled() ? std::min(Sk, std::max<int64_t>(0, r1 - 1 + off + 1)) : Sk;
      std::fill(mrow.begin(), mrow.begin() + br, -inf);
      std::fill(lrow.begin(), lrow.begin() + br, T(0));
      bool first = true;  // the first computed tile overwrites O (beta = 0)
      for (int64_t c0 = 0; c0 < kend; c0 += kBlockKey) {
        const int64_t c1 = std::min(kend, c0 + kBlockKey), bc = c1 - c0;
        const uint8_t cls = t.tiled() ? t.at(qb, c0 / kBlockKey) : kPartial;
        if (cls == kEmpty) continue;
        const bool hide_band = causal && cls == kPartial, hide_mask = t.mask != nullptr && cls == kPartial;
        mm_abt<T>(br, bc, D, T(1), qi, D, kh + c0 * D, D, T(0), S.data(), bc);
        for (int64_t r = 0; r < br; ++r) {
          T* s = S.data() + r * bc;
          if (hide_band) {  // keys j > i + off hidden
            const int64_t last = r0 + r + off - c0;  // last visible column of this row in the tile
            for (int64_t c = std::max<int64_t>(0, last + 1); c < bc; ++c) s[c] = -inf;
          }
          if (hide_mask) {  // the user's bool mask: False hides
            const bool* vis = t.row(b, h, r0 + r, c0);
            for (int64_t c = 0; c < bc; ++c) s[c] = vis[c * t.sk] ? s[c] : -inf;
          }
          const T mx = row_max(s, bc);
          const T m_old = mrow[r];
          const T m_new = std::max(m_old, mx);
          const T m_safe = m_new == -inf ? T(0) : m_new;  // shift by 0 while nothing is seen
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < bc; ++c) {
            const T e = exp2_t<T>(s[c] - m_safe);
            s[c] = e;
            sum += e;
          }
          const T alpha = exp2_t<T>(m_old - m_safe);  // m_old = -inf: 0 (nothing accumulated yet)
          if (m_old != -inf && alpha != T(1)) {
            T* orow = oi + r * Dv;
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) orow[d] *= alpha;
          }
          lrow[r] = (m_old == -inf ? T(0) : lrow[r] * alpha) + sum;
          mrow[r] = m_new;
        }
        // the first computed tile overwrites O (beta = 0); a row it hides entirely gets 0 there
        mm_ab<T>(br, Dv, bc, T(1), S.data(), bc, vh + c0 * Dv, Dv, first ? T(0) : T(1), oi, Dv);
        first = false;
      }
      for (int64_t r = 0; r < br; ++r) {
        const bool seen = lrow[r] > T(0);
        T* orow = oi + r * Dv;
        if (seen) {
          const T ell = lrow[r];
#pragma omp simd
          for (int64_t d = 0; d < Dv; ++d) orow[d] /= ell;
        } else {
          std::fill(orow, orow + Dv, T(0));
        }
        mi[r] = seen ? mrow[r] : inf;
        li[r] = lrow[r];
        lsei[r] = seen ? (mrow[r] + std::log2(lrow[r])) * ln2 : inf;
      }
    }
  });
}

// The Tiling of a call: cls (n_r, n_c) uint8 with tiles of block_q x block_k, mask a 4-D bool tensor
// (each dim 1 or full) or undefined; an undefined cls is the dense case.
Tiling make_tiling(const c10::optional<at::Tensor>& cls, const c10::optional<at::Tensor>& mask, int64_t block_q,
                   int64_t block_k) {
  Tiling t;
  if (!cls.has_value() || !cls->defined()) return t;
  TORCH_CHECK(cls->scalar_type() == at::kByte && cls->dim() == 2 && cls->is_contiguous(), "flash_cpu: cls (n_r, n_c) uint8");
  t.cls = cls->const_data_ptr<uint8_t>();
  t.n_c = cls->size(1);
  t.bq = block_q;
  t.bk = block_k;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4, "flash_cpu: mask 4-D bool");
    int64_t st[4];
    for (int d = 0; d < 4; ++d) st[d] = mask->size(d) == 1 ? 0 : mask->stride(d);
    t.mask = mask->const_data_ptr<bool>();
    t.sb = st[0], t.sh = st[1], t.sq = st[2], t.sk = st[3];
  }
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flash_fwd(const at::Tensor& q, const at::Tensor& k,
                                                                     const at::Tensor& v, bool causal,
                                                                     double scale, const c10::optional<at::Tensor>& cls,
                                                                     const c10::optional<at::Tensor>& mask,
                                                                     int64_t block_q, int64_t block_k) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "flash_fwd: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "flash_fwd: (B, H, S, D) tensors");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "flash_fwd: one dtype");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "flash_fwd: contiguous tensors");
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "flash_fwd: H % Hkv != 0");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), Dv = v.size(3);
  auto o = at::empty({B, H, Sq, Dv}, q.options());
  auto m = at::empty({B, H, Sq}, q.options());
  auto l = at::empty({B, H, Sq}, q.options());
  auto lse = at::empty({B, H, Sq}, q.options());
  const double scale2 = scale * 1.44269504088896340735992468100189214;  // log2(e) * scale
  const Tiling t = make_tiling(cls, mask, block_q, block_k);
  if (q.scalar_type() == at::kFloat) {
    forward_impl<float>(q, k, v, causal, scale2, t, o, m, l, lse);
  } else if (q.scalar_type() == at::kDouble) {
    forward_impl<double>(q, k, v, causal, scale2, t, o, m, l, lse);
  } else {
    TORCH_CHECK(false, "flash_fwd: float32 or float64, got ", q.scalar_type());
  }
  return {o, m, l, lse};
}

template <typename T>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                   const at::Tensor& m, const at::Tensor& l, const at::Tensor& dout, bool causal, double scale, int64_t bq,
                   int64_t bkk, const Tiling& t, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const T c2 = static_cast<T>(scale * 1.44269504088896340735992468100189214);
  const T sc = static_cast<T>(scale);
  const T ln2 = static_cast<T>(0.693147180559945309417232121458176568);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Sk = k.size(2), Dv = v.size(3), G = H / Hkv;
  const int64_t off = Sk - Sq;
  const T* qp = q.const_data_ptr<T>();
  const T* kp = k.const_data_ptr<T>();
  const T* vp = v.const_data_ptr<T>();
  const T* op = o.const_data_ptr<T>();
  const T* mp = m.const_data_ptr<T>();
  const T* lp = l.const_data_ptr<T>();
  const T* dop = dout.const_data_ptr<T>();
  T* dqp = dq.mutable_data_ptr<T>();
  T* dkp = dk.mutable_data_ptr<T>();
  T* dvp = dv.mutable_data_ptr<T>();
  const T inf = std::numeric_limits<T>::infinity();
  const bool one_tile = bkk >= Sk;
  // a tiled call keeps the plan's sizes (its tile map is indexed by them)
  const int64_t block_k = t.tiled() ? bkk : std::max<int64_t>(1, std::min(bkk, Sk));
  const int64_t block_q = t.tiled() ? bq : std::max<int64_t>(1, std::min(bq, Sq));

  struct Buffers {
    std::vector<T> E, dP, dos, Dd, qsh;
  };
  auto buffers = [&]() {
    return Buffers{std::vector<T>(block_q * block_k), std::vector<T>(block_q * block_k), std::vector<T>(Sq * Dv),
                   std::vector<T>(Sq), std::vector<T>(Sq * D)};
  };
  // Query head bh: writes its dQ and adds its dK (before x ln 2) and dV into dkh, dvh.
  auto head = [&](int64_t bh, T* dkh, T* dvh, Buffers& buf) {
    std::vector<T>&E = buf.E, &dP = buf.dP, &dos = buf.dos, &Dd = buf.Dd, &qsh = buf.qsh;
    const int64_t bk = bh / G, b = bh / H, h = bh % H;
    const T* kh = kp + bk * Sk * D;
    const T* vh = vp + bk * Sk * Dv;
    const T* qsrc = qp + bh * Sq * D;
    T* qh = qsh.data();  // c Q of this head
#pragma omp simd
    for (int64_t x = 0; x < Sq * D; ++x) qh[x] = qsrc[x] * c2;
    const T* oh = op + bh * Sq * Dv;
    const T* doh = dop + bh * Sq * Dv;
    const T* mh = mp + bh * Sq;
    const T* lh = lp + bh * Sq;
    T* dqh = dqp + bh * Sq * D;
    std::fill(dqh, dqh + Sq * D, T(0));
    // dO' = dO / max(l, 1) and D' = rowsum(dO' o O) (0 for a row that sees no key: O = 0)
    for (int64_t i = 0; i < Sq; ++i) {
      const T ell = std::max(lh[i], T(1));
      T acc = 0;
      T* d = dos.data() + i * Dv;
      const T* orow = oh + i * Dv;
      const T* drow = doh + i * Dv;
      for (int64_t x = 0; x < Dv; ++x) {
        d[x] = drow[x] / ell;
        acc += d[x] * orow[x];
      }
      Dd[i] = acc;
    }
    for (int64_t r0 = 0; r0 < Sq; r0 += block_q) {
      const int64_t r1 = std::min(Sq, r0 + block_q), br = r1 - r0;
      const int64_t kend = causal && !t.tiled() ? std::min(Sk, std::max<int64_t>(0, r1 - 1 + off + 1)) : Sk;
      const T* qi = qh + r0 * D;
      const T* di = dos.data() + r0 * Dv;
      for (int64_t c0 = 0; c0 < kend; c0 += block_k) {
        const int64_t c1 = std::min(kend, c0 + block_k), bc = c1 - c0;
        const uint8_t cls = t.tiled() ? t.at(r0 / block_q, c0 / block_k) : kPartial;
        if (cls == kEmpty) continue;
        const bool hide_band = causal && cls == kPartial, hide_mask = t.mask != nullptr && cls == kPartial;
        mm_abt<T>(br, bc, D, T(1), qi, D, kh + c0 * D, D, T(0), E.data(), bc);
        mm_abt<T>(br, bc, Dv, T(1), di, Dv, vh + c0 * Dv, Dv, T(0), dP.data(), bc);
        for (int64_t r = 0; r < br; ++r) {
          T* e = E.data() + r * bc;
          T* dp = dP.data() + r * bc;
          const T mr = mh[r0 + r];
          int64_t vis = bc;
          if (hide_band) vis = std::min(bc, std::max<int64_t>(0, r0 + r + off - c0 + 1));
          if (mr == inf) vis = 0;  // sees no key: E = 0
          T Dr = Dd[r0 + r];
          if (hide_mask) {  // E = 0 where the user's mask hides; then as below
            const bool* keep = t.row(b, h, r0 + r, c0);
            T dot = 0;
            for (int64_t c = 0; c < vis; ++c) {
              const T ev = keep[c * t.sk] ? exp2_t<T>(e[c] - mr) : T(0);
              e[c] = ev;
              dot += ev * dp[c];
            }
            if (one_tile) Dr = dot / std::max(lh[r0 + r], T(1));
#pragma omp simd
            for (int64_t c = 0; c < vis; ++c) dp[c] = e[c] * (dp[c] - Dr);
          } else if (one_tile) {
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < vis; ++c) {
              const T ev = exp2_t<T>(e[c] - mr);
              e[c] = ev;
              dot += ev * dp[c];
            }
            Dr = dot / std::max(lh[r0 + r], T(1));
#pragma omp simd
            for (int64_t c = 0; c < vis; ++c) dp[c] = e[c] * (dp[c] - Dr);
          } else {
#pragma omp simd
            for (int64_t c = 0; c < vis; ++c) {
              const T ev = exp2_t<T>(e[c] - mr);
              e[c] = ev;
              dp[c] = ev * (dp[c] - Dr);
            }
          }
          for (int64_t c = vis; c < bc; ++c) {
            e[c] = T(0);
            dp[c] = T(0);
          }
        }
        // dV += E^T dO',  dQ += dS K,  dK += dS^T (c Q)
        mm_atb_acc<T>(bc, Dv, br, T(1), E.data(), bc, di, Dv, dvh + c0 * Dv, Dv);
        mm_ab<T>(br, D, bc, T(1), dP.data(), bc, kh + c0 * D, D, T(1), dqh + r0 * D, D);
        mm_atb_acc<T>(bc, D, br, T(1), dP.data(), bc, qi, D, dkh + c0 * D, D);
      }
    }
#pragma omp simd
    for (int64_t x = 0; x < Sq * D; ++x) dqh[x] *= sc;
  };

  if (G == 1 || B * Hkv >= at::get_num_threads()) {
    // one work item per (batch, kv head): it owns dK, dV and sums its G query heads into them
    at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
      Buffers buf = buffers();
      for (int64_t bk = begin; bk < end; ++bk) {
        T* dkh = dkp + bk * Sk * D;
        T* dvh = dvp + bk * Sk * Dv;
        std::fill(dkh, dkh + Sk * D, T(0));
        std::fill(dvh, dvh + Sk * Dv, T(0));
        for (int64_t g = 0; g < G; ++g) head(bk * G + g, dkh, dvh, buf);
#pragma omp simd
        for (int64_t x = 0; x < Sk * D; ++x) dkh[x] *= ln2;
      }
    });
    return;
  }
  // Fewer kv heads than threads (MQA/GQA at small batch): one item per query head, each with its own
  // dK, dV partials, summed over the group afterwards in head order.
  std::vector<T> pk(B * H * Sk * D, T(0)), pv(B * H * Sk * Dv, T(0));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Buffers buf = buffers();
    for (int64_t bh = begin; bh < end; ++bh) head(bh, pk.data() + bh * Sk * D, pv.data() + bh * Sk * Dv, buf);
  });
  at::parallel_for(0, B * Hkv * Sk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = (b * Hkv + hk) * Sk + j
      const int64_t bk = row / Sk, j = row % Sk;
      T* dkr = dkp + row * D;
      T* dvr = dvp + row * Dv;
      std::fill(dkr, dkr + D, T(0));
      std::fill(dvr, dvr + Dv, T(0));
      for (int64_t g = 0; g < G; ++g) {
        const T* a = pk.data() + ((bk * G + g) * Sk + j) * D;
        const T* c = pv.data() + ((bk * G + g) * Sk + j) * Dv;
        for (int64_t x = 0; x < D; ++x) dkr[x] += a[x];
        for (int64_t x = 0; x < Dv; ++x) dvr[x] += c[x];
      }
      for (int64_t x = 0; x < D; ++x) dkr[x] *= ln2;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_bwd(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& o,
                                                         const at::Tensor& m, const at::Tensor& l,
                                                         const at::Tensor& dout, bool causal, double scale,
                                                         int64_t block_q, int64_t block_k,
                                                         const c10::optional<at::Tensor>& cls,
                                                         const c10::optional<at::Tensor>& mask) {
  for (const at::Tensor* t : {&q, &k, &v, &o, &m, &l, &dout}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == q.scalar_type(),
                "flash_bwd: contiguous CPU tensors of one dtype");
  }
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  const Tiling t = make_tiling(cls, mask, block_q, block_k);
  if (q.scalar_type() == at::kFloat) {
    backward_impl<float>(q, k, v, o, m, l, dout, causal, scale, block_q, block_k, t, dq, dk, dv);
  } else if (q.scalar_type() == at::kDouble) {
    backward_impl<double>(q, k, v, o, m, l, dout, causal, scale, block_q, block_k, t, dq, dk, dv);
  } else {
    TORCH_CHECK(false, "flash_bwd: float32 or float64, got ", q.scalar_type());
  }
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY(deepnotes_attention, m) {
  m.def("flash_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale, Tensor? cls, Tensor? mask, "
        "int block_q, int block_k) -> (Tensor, Tensor, Tensor, Tensor)", &flash_fwd);
  m.def("flash_bwd(Tensor q, Tensor k, Tensor v, Tensor o, Tensor m, Tensor l, Tensor dout, bool causal, "
        "float scale, int block_q, int block_k, Tensor? cls, Tensor? mask) "
        "-> (Tensor, Tensor, Tensor)", &flash_bwd);
}
