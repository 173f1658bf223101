// One pass per element of Adam/AdamW over a list of CPU tensors: the update of
// deepnotes/optim/adam.py's module docstring, in the operation order of torch's
// fused CPU kernel (aten/src/ATen/native/cpu/FusedAdamKernel.cpp), so the two agree
// to rounding. All tensors of the list are cut into chunks of kChunk elements and the
// chunks shared among threads in one parallel region (torch opens one per tensor).
// Half and bfloat16 tensors are updated in float (half through L1-sized float tiles), float and
// double in their own type; every conversion rounds to nearest even, as torch's casts.
// Build flags (deepnotes/optim/_fused_adam.py): -O3 -march=native -fopenmp -ffp-contract=off.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__F16C__)
#include <immintrin.h>  // the F16C half <-> float conversions
#endif

namespace {

// 16K elements: 64 KB per float32 array, a multiple of the 64-byte line (no false sharing).
constexpr int64_t kChunk = 1 << 14;

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

// How a dtype's elements are stored and read into the math type (float for half and bfloat16).
// The 16-bit conversions are written out branch-free so that the compiler vectorises them (c10's
// convert one element at a time); both round to nearest even, as c10's do.
template <typename T>
struct Storage {  // float and double: as they are
  using type = T;
  using math = T;
  static T load(T x) { return x; }
  static T store(T x) { return x; }
};

template <>
struct Storage<c10::BFloat16> {  // the top half of a float
  using type = uint16_t;
  using math = float;
  static float load(uint16_t x) { return float_of(static_cast<uint32_t>(x) << 16); }
  static uint16_t store(float f) {
    const uint32_t u = bits_of(f);
    const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return f != f ? static_cast<uint16_t>(0x7FC0) : rounded;  // NaN: the quiet NaN
  }
};

template <>
struct Storage<c10::Half> {  // IEEE binary16 (after F. Giesen's public-domain half <-> float routines)
  using type = uint16_t;
  using math = float;
  static float load(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7FFFu;                                  // exponent and mantissa
    uint32_t normal = (em << 13) + (112u << 23);                      // exponent bias 15 -> 127
    normal = em >= 0x7C00u ? normal + (112u << 23) : normal;          // inf and NaN: exponent 255
    const float subnormal = static_cast<float>(em) * 5.9604644775390625e-8f;  // em * 2^-24, exact
    return float_of((em < 0x0400u ? bits_of(subnormal) : normal) | sign);
  }
  static uint16_t store(float f) {
    uint32_t u = bits_of(f);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    const uint32_t inf_nan = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
    // |f| < 2^-14: a half subnormal; adding 0.5 makes the float adder round at 2^-24, to nearest even
    const uint32_t subnormal = bits_of(float_of(u) + 0.5f) - bits_of(0.5f);
    // normal: rebias, round to nearest even on the 13 dropped bits (a carry may reach inf: right)
    const uint32_t normal = (u - (112u << 23) + 0xFFFu + ((u >> 13) & 1u)) >> 13;
    const uint32_t h = u >= (143u << 23) ? inf_nan : (u < (113u << 23) ? subnormal : normal);
    return static_cast<uint16_t>(h | (sign >> 16));
  }
};

// Half <-> float over arrays, with the CPU's F16C instructions where it has them (round to nearest even,
// as the portable routine above, which takes the tail and the CPUs without them).
inline void half_to_float(const uint16_t* __restrict h, float* __restrict f, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
#endif
  for (; i < n; ++i) f[i] = Storage<c10::Half>::load(h[i]);
}

inline void float_to_half(const float* __restrict f, uint16_t* __restrict h, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(f + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) h[i] = Storage<c10::Half>::store(f[i]);
}

// The per-step scalars, computed in double as torch does, then rounded to the math type.
template <typename O>
struct Coefficients {
  O lerp_coeff;    // 1 - beta1, or (1 - beta1) - 1 when |1 - beta1| >= 0.5 (torch's lerp)
  bool lerp_small;
  O beta2, one_minus_beta2, bc2_sqrt, eps, step_size, weight_decay, decay_factor, inv_scale;
  bool has_scale;

  Coefficients(double lr, double beta1, double beta2_, double weight_decay_, double eps_,
               double step, const float* grad_scale) {
    const O w = static_cast<O>(1 - beta1);
    lerp_small = std::abs(w) < O(0.5);
    lerp_coeff = lerp_small ? w : w - O(1);
    beta2 = static_cast<O>(beta2_);
    one_minus_beta2 = static_cast<O>(1 - beta2_);
    bc2_sqrt = static_cast<O>(std::sqrt(1 - std::pow(beta2_, step)));
    eps = static_cast<O>(eps_);
    step_size = static_cast<O>(lr / (1 - std::pow(beta1, step)));
    weight_decay = static_cast<O>(weight_decay_);
    decay_factor = static_cast<O>(1 - lr * weight_decay_);
    has_scale = grad_scale != nullptr;
    inv_scale = has_scale ? static_cast<O>(*grad_scale) : O(1);  // divided by, as torch
  }
};

template <typename T, bool AMSGRAD, bool ADAMW, bool DECAY, bool MAXIMIZE, bool SCALE, bool SMALL>
void update(typename Storage<T>::type* __restrict__ p, typename Storage<T>::type* __restrict__ g,
            typename Storage<T>::type* __restrict__ m, typename Storage<T>::type* __restrict__ v,
            typename Storage<T>::type* __restrict__ v_max, int64_t n,
            const Coefficients<typename Storage<T>::math>& c) {
  using S = Storage<T>;
  using O = typename S::math;
  if constexpr (std::is_same_v<T, c10::Half>) {
    // Half: tiles converted to float in L1, updated by the float loop, converted back.
    constexpr int64_t kTile = 256;
    alignas(64) float fp[kTile], fg[kTile], fm[kTile], fv[kTile], fv_max[kTile];
    for (int64_t b = 0; b < n; b += kTile) {
      const int64_t k = std::min(kTile, n - b);
      half_to_float(p + b, fp, k);
      half_to_float(g + b, fg, k);
      half_to_float(m + b, fm, k);
      half_to_float(v + b, fv, k);
      if constexpr (AMSGRAD) half_to_float(v_max + b, fv_max, k);
      update<float, AMSGRAD, ADAMW, DECAY, MAXIMIZE, SCALE, SMALL>(fp, fg, fm, fv, fv_max, k, c);
      float_to_half(fp, p + b, k);
      if constexpr (SCALE) float_to_half(fg, g + b, k);
      float_to_half(fm, m + b, k);
      float_to_half(fv, v + b, k);
      if constexpr (AMSGRAD) float_to_half(fv_max, v_max + b, k);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      O grad = S::load(g[i]);
      if constexpr (SCALE) {
        grad = grad / c.inv_scale;
        g[i] = S::store(grad);  // torch's fused kernel unscales the gradient in place
      }
      if constexpr (MAXIMIZE) grad = -grad;
      O theta = S::load(p[i]);
      if constexpr (DECAY) {
        if constexpr (ADAMW) theta = theta * c.decay_factor;      // θ ← θ(1 − γλ)
        else grad = std::fma(theta, c.weight_decay, grad);         // g ← g + λθ
      }
      const O m_old = S::load(m[i]);
      // m ← lerp(m, g, 1 − β1), torch's two-sided lerp
      const O m_new = SMALL ? std::fma(c.lerp_coeff, grad - m_old, m_old)
                            : std::fma(c.lerp_coeff, grad - m_old, grad);
      // v ← β2·v + (1 − β2)·g²
      O v_new = std::fma(c.one_minus_beta2 * grad, grad, S::load(v[i]) * c.beta2);
      m[i] = S::store(m_new);
      v[i] = S::store(v_new);
      if constexpr (AMSGRAD) {
        v_new = std::max(S::load(v_max[i]), v_new);
        v_max[i] = S::store(v_new);
      }
      const O denom = std::sqrt(v_new) / c.bc2_sqrt + c.eps;     // √v̂ + ε
      p[i] = S::store(theta - c.step_size * m_new / denom);
    }
  }
}

// Picks the instantiation for the run-time flags (the loop itself has no branches).
template <typename T>
using UpdateFn = void (*)(typename Storage<T>::type*, typename Storage<T>::type*, typename Storage<T>::type*,
                          typename Storage<T>::type*, typename Storage<T>::type*, int64_t,
                          const Coefficients<typename Storage<T>::math>&);

template <typename T, bool A, bool W, bool D, bool M, bool S>
UpdateFn<T> pick6(bool small) {
  return small ? &update<T, A, W, D, M, S, true> : &update<T, A, W, D, M, S, false>;
}
template <typename T, bool A, bool W, bool D, bool M>
UpdateFn<T> pick5(bool scale, bool small) {
  return scale ? pick6<T, A, W, D, M, true>(small) : pick6<T, A, W, D, M, false>(small);
}
template <typename T, bool A, bool W, bool D>
UpdateFn<T> pick4(bool maximize, bool scale, bool small) {
  return maximize ? pick5<T, A, W, D, true>(scale, small) : pick5<T, A, W, D, false>(scale, small);
}
template <typename T, bool A, bool W>
UpdateFn<T> pick3(bool decay, bool maximize, bool scale, bool small) {
  return decay ? pick4<T, A, W, true>(maximize, scale, small) : pick4<T, A, W, false>(maximize, scale, small);
}
template <typename T, bool A>
UpdateFn<T> pick2(bool adamw, bool decay, bool maximize, bool scale, bool small) {
  return adamw ? pick3<T, A, true>(decay, maximize, scale, small) : pick3<T, A, false>(decay, maximize, scale, small);
}
template <typename T>
UpdateFn<T> pick(bool amsgrad, bool adamw, bool decay, bool maximize, bool scale, bool small) {
  return amsgrad ? pick2<T, true>(adamw, decay, maximize, scale, small)
                 : pick2<T, false>(adamw, decay, maximize, scale, small);
}

struct Chunk {
  int64_t tensor, begin, end;
};

// Each companion must share the parameter's shape and strides; the parameter must be dense
// (its elements fill numel consecutive slots), so the update can run over flat memory.
void check_list(const at::TensorList& list, const at::TensorList& params, const char* name) {
  TORCH_CHECK(list.size() == params.size(), "fused_adam_: ", name, " has ", list.size(),
              " tensors, params has ", params.size());
  for (size_t i = 0; i < list.size(); ++i) {
    TORCH_CHECK(list[i].device().is_cpu() && list[i].scalar_type() == params[i].scalar_type() &&
                    list[i].sizes() == params[i].sizes() && list[i].strides() == params[i].strides(),
                "fused_adam_: ", name, "[", i, "] must be a CPU tensor of the dtype, shape and strides of params[",
                i, "]");
  }
}

void fused_adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                 double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                 bool maximize, bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
                 const std::optional<at::Tensor>& found_inf) {
  const size_t n_tensors = params.size();
  for (size_t i = 0; i < n_tensors; ++i) {
    TORCH_CHECK(params[i].device().is_cpu() && params[i].is_non_overlapping_and_dense(),
                "fused_adam_: params[", i, "] must be a dense CPU tensor");
  }
  check_list(grads, params, "grads");
  check_list(exp_avgs, params, "exp_avgs");
  check_list(exp_avg_sqs, params, "exp_avg_sqs");
  if (amsgrad) check_list(max_exp_avg_sqs, params, "max_exp_avg_sqs");
  TORCH_CHECK(state_steps.size() == n_tensors, "fused_adam_: one step tensor per parameter expected");

  if (found_inf.has_value() && found_inf->defined()) {
    TORCH_CHECK(found_inf->numel() == 1, "fused_adam_: found_inf must have one element");
    if (found_inf->item<double>() == 1.0) return;  // an inf/NaN gradient: skip the step, step counters included
  }
  at::Tensor scale;
  const float* scale_ptr = nullptr;
  if (grad_scale.has_value() && grad_scale->defined()) {
    scale = grad_scale->to(at::kCPU, at::kFloat).contiguous();
    scale_ptr = scale.data_ptr<float>();
  }

  // t ← t + 1 on every counter, then the update reads t as a float (as torch's kernel does).
  std::vector<double> steps(n_tensors);
  for (size_t i = 0; i < n_tensors; ++i) {
    const at::Tensor& s = state_steps[i];
    if (s.device().is_cpu() && s.scalar_type() == at::kFloat && s.numel() == 1) {
      float* ptr = s.data_ptr<float>();
      *ptr += 1.0f;
      steps[i] = *ptr;
    } else {
      s.add_(1);
      steps[i] = static_cast<double>(s.item<float>());
    }
  }

  std::vector<Chunk> chunks;
  for (size_t i = 0; i < n_tensors; ++i) {
    const int64_t n = params[i].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({static_cast<int64_t>(i), b, std::min(n, b + kChunk)});
  }
  const bool decay = weight_decay != 0;

  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const Chunk& ch = chunks[k];
      const size_t i = static_cast<size_t>(ch.tensor);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "fused_adam_", [&] {
        using Elem = typename Storage<scalar_t>::type;
        const Coefficients<typename Storage<scalar_t>::math> c(lr, beta1, beta2, weight_decay, eps, steps[i],
                                                                scale_ptr);
        auto at = [&](const at::Tensor& t) { return reinterpret_cast<Elem*>(t.data_ptr<scalar_t>()) + ch.begin; };
        auto fn = pick<scalar_t>(amsgrad, decoupled_weight_decay, decay, maximize, c.has_scale, c.lerp_small);
        fn(at(params[i]), at(grads[i]), at(exp_avgs[i]), at(exp_avg_sqs[i]),
           amsgrad ? at(max_exp_avg_sqs[i]) : nullptr, ch.end - ch.begin, c);
      });
    }
  });
}

}  // namespace

// A namespace of its own: other deepnotes extensions may register theirs.
TORCH_LIBRARY(deepnotes_optim, m) {
  m.def("fused_adam_(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
        "Tensor[] max_exp_avg_sqs, Tensor[] state_steps, float lr, float beta1, float beta2, "
        "float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
        "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()",
        &fused_adam_);
}
