// ACmix Stage II on the CPU: window attention and convolution path, fused into
// one output, forward and hand-written backward.
//
// Input is the Stage-I map qkv (B, 3C, H, W) = [q, k, v], each C = heads*head_dim
// channels: channel which*C + head*head_dim + d.  The convolution path is the
// group convolution whose group d reads piece p = which*heads + head, i.e.
// channel which*C + head*head_dim + d (the fc folded in, docs/fast-paths.md rewrite 3); the
// kernel reads those channels in place, so no permuted copy is ever made.
//
//   out = rate1 * att + rate2 * (conv(qkv; Wc) + bias)
//   att: logit(t, x) = qs.k_t - r.loc_t, qs = scale * q, r = W_p^T qs   (docs/fast-paths.md rewrite 1)
//
// For each (batch, head) the k and v maps are copied once with every row
// reflect-padded (phase-split under stride); an output row then reads its
// window as plain shifts of those rows, and the inner loops run over a block of
// XB output columns held in registers (offset or channel reductions
// innermost-but-one), so they vectorise (docs/fast-paths.md).  The softmax P is not stored: the
// backward recomputes it row by row and uses sum_d dO.O = sum_t P_t dP_t, so
// only the Stage-I map is kept for the backward.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

// The softmax's exp, vectorised without -ffast-math: glibc's libmvec has SSE4/AVX2/AVX-512 variants of exp
// and expf, but math.h declares them only under __FAST_MATH__.  Declaring them here lets GCC call them
// (-fno-math-errno makes the call vectorisable); they keep IEEE NaN/Inf semantics, within 4 ulp.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(__FAST_MATH__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 22))
extern "C" {
__attribute__((__simd__("notinbranch"))) double exp(double) noexcept;
__attribute__((__simd__("notinbranch"))) float expf(float) noexcept;
}
#endif

namespace {

// Output columns per register block: 16, 32 or 64 (one to four independent
// 16-lane accumulator chains), chosen per map width by the entry points.
inline int64_t round_up(int64_t n, int64_t xb) { return (n + xb - 1) / xb * xb; }
constexpr int64_t LANES = 16;  // lanes of the weight-gradient partial sums (block widths are multiples)

// Padded rows are stored split into s phases (element xp at (xp % s)*L + xp / s),
// so that a window or kernel offset under stride s is a unit-stride run: the
// output x reads element x*s + off at phase off % s, position x + off / s.
struct Geo {
  int64_t B, heads, hd, C, H, W, Ho, Wo, Wob;  // Wob: Wo rounded up to the block width xb
  int64_t ka, kc, s, dil, pad_a, pad_c, Wp, Wz, Wzb, xb;
  int64_t Lp, RS;  // attention rows: phase length, row stride (s * Lp)
  int64_t Lz, RZ;  // convolution input rows: phase length, row stride (s * Lz)
  int64_t at(int64_t off) const { return (off % s) * Lp + off / s; }
  int64_t atz(int64_t off) const { return (off % s) * Lz + off / s; }
};

template <typename T>
struct Ctx {
  Geo g;
  const T* qkv;
  const int64_t* rh;  // reflect index of padded rows (H + 2 pad_a)
  const int64_t* rw;  // reflect index of padded cols (W + 2 pad_a)
  const T* lxp;       // x location of every padded column
  const T* ly;        // y location of every row
  const T* wp;        // (hd, 2) position weights, or null
  const int64_t* aos; // start of window column offset cc*dil in a phase-split row
  const int64_t* zos; // start of kernel column offset v in a phase-split convolution row
  T scale;
  const T* chan(int64_t b, int64_t ch) const { return qkv + (b * 3 * g.C + ch) * g.H * g.W; }
  int64_t ch(int64_t which, int64_t h, int64_t d) const { return which * g.C + h * g.hd + d; }
  // channel of piece p (= which*heads + head) in convolution group d
  int64_t piece(int64_t p, int64_t d) const { return ch(p / g.heads, p % g.heads, d); }
};

// one head's k or v, every row reflect-padded horizontally: row (d, y) at dst + (d*H + y)*RS, phase-split
template <typename T>
void pad_map(const Ctx<T>& c, int64_t b, int64_t which, int64_t h, T* __restrict__ dst) {
  const Geo& g = c.g;
  for (int64_t d = 0; d < g.hd; ++d) {
    const T* src = c.chan(b, c.ch(which, h, d));
    for (int64_t y = 0; y < g.H; ++y) {
      const T* row = src + y * g.W;
      T* out = dst + (d * g.H + y) * g.RS;
      if (g.s == 1) {
        for (int64_t xp = 0; xp < g.pad_a; ++xp) out[xp] = row[c.rw[xp]];
        std::copy(row, row + g.W, out + g.pad_a);
        for (int64_t xp = g.pad_a + g.W; xp < g.Wp; ++xp) out[xp] = row[c.rw[xp]];
      } else {
        for (int64_t ph = 0; ph < g.s; ++ph)  // phase ph holds padded columns ph, ph + s, ...
          for (int64_t xp = ph, m = 0; xp < g.Wp; xp += g.s, ++m) out[ph * g.Lp + m] = row[c.rw[xp]];
      }
    }
  }
}

// the adjoint of pad_map: add the padded-map gradient into qkv's gradient
template <typename T>
void fold_map(const Ctx<T>& c, int64_t b, int64_t which, int64_t h, const T* __restrict__ src, T* __restrict__ gqkv) {
  const Geo& g = c.g;
  for (int64_t d = 0; d < g.hd; ++d) {
    T* dst = gqkv + (b * 3 * g.C + c.ch(which, h, d)) * g.H * g.W;
    for (int64_t y = 0; y < g.H; ++y) {
      T* row = dst + y * g.W;
      const T* in = src + (d * g.H + y) * g.RS;
      if (g.s == 1) {
        for (int64_t x = 0; x < g.W; ++x) row[x] += in[g.pad_a + x];
        for (int64_t xp = 0; xp < g.pad_a; ++xp) row[c.rw[xp]] += in[xp];
        for (int64_t xp = g.pad_a + g.W; xp < g.Wp; ++xp) row[c.rw[xp]] += in[xp];
      } else {
        for (int64_t ph = 0; ph < g.s; ++ph)
          for (int64_t xp = ph, m = 0; xp < g.Wp; xp += g.s, ++m) row[c.rw[xp]] += in[ph * g.Lp + m];
      }
    }
  }
}

// scaled q row (hd x Wob, zero tail) and r = W_p^T qs (2 x Wob)
template <typename T>
void load_q(const Ctx<T>& c, int64_t b, int64_t h, int64_t i, T* __restrict__ q, T* __restrict__ r) {
  const Geo& g = c.g;
  for (int64_t d = 0; d < g.hd; ++d) {
    const T* row = c.chan(b, c.ch(0, h, d)) + i * g.s * g.W;
    T* qd = q + d * g.Wob;
    for (int64_t x = 0; x < g.Wo; ++x) qd[x] = c.scale * row[x * g.s];
  }
  if (!c.wp) return;
  std::fill(r, r + 2 * g.Wob, T(0));
  for (int64_t d = 0; d < g.hd; ++d) {
    const T w0 = c.wp[2 * d], w1 = c.wp[2 * d + 1];
    const T* qd = q + d * g.Wob;
    for (int64_t x = 0; x < g.Wob; ++x) {
      r[x] += w0 * qd[x];
      r[g.Wob + x] += w1 * qd[x];
    }
  }
}

// Narrow rows give one register block per row, so a single accumulator chain: work on
// CB window offsets (or channels) at once to give the core independent chains.
template <int64_t XB>
constexpr int64_t chains() { return XB >= 64 ? 1 : (XB >= 32 ? 2 : 4); }

// out[cc][x] += sum_d lhs[d][x] * map[d][y][offset(cc) + x] for the ka window columns cc (ka x Wob rows)
template <typename T, bool UNIT, int64_t XB>
void offset_dots(const Ctx<T>& c, int64_t y, const T* __restrict__ lhs, const T* __restrict__ map,
                 T* __restrict__ out) {
  constexpr int64_t CB = chains<XB>();
  const Geo& g = c.g;
  const int64_t Wob = g.Wob;
  for (int64_t c0 = 0; c0 < g.ka; c0 += CB) {
    const int64_t nb = std::min(CB, g.ka - c0);
    int64_t ao[CB];
    for (int64_t b = 0; b < CB; ++b) {
      const int64_t cc = c0 + std::min(b, nb - 1);  // spare chains repeat the last column
      ao[b] = UNIT ? cc * g.dil : c.aos[cc];
    }
    for (int64_t x0 = 0; x0 < Wob; x0 += XB) {
      T acc[CB][XB];
      for (int64_t b = 0; b < CB; ++b)
        for (int64_t j = 0; j < XB; ++j) acc[b][j] = 0;
      for (int64_t d = 0; d < g.hd; ++d) {
        const T* __restrict__ ld = lhs + d * Wob + x0;
        const T* __restrict__ base = map + (d * g.H + y) * g.RS + x0;
        for (int64_t b = 0; b < CB; ++b)
          for (int64_t j = 0; j < XB; ++j) acc[b][j] += ld[j] * base[ao[b] + j];
      }
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < XB; ++j) out[(c0 + b) * Wob + x0 + j] += acc[b][j];
    }
  }
}

// logits (K x Wob) of an output row whose window rows are ys[a], then softmax in place; kb is the padded k map
template <typename T, bool UNIT, int64_t XB>
void softmax_row(const Ctx<T>& c, const int64_t* ys, const T* __restrict__ q, const T* __restrict__ r,
                 const T* __restrict__ kb, T* __restrict__ L, T* __restrict__ tmp) {
  const Geo& g = c.g;
  const int64_t Wob = g.Wob, K = g.ka * g.ka;
  for (int64_t a = 0; a < g.ka; ++a) {
    const T lyv = c.ly[ys[a]];
    for (int64_t cc = 0; cc < g.ka; ++cc) {
      T* __restrict__ Lt = L + (a * g.ka + cc) * Wob;
      if (c.wp) {
        const T* __restrict__ lx = c.lxp + (UNIT ? cc * g.dil : c.aos[cc]);
        for (int64_t x = 0; x < Wob; ++x) Lt[x] = -(r[x] * lx[x] + r[Wob + x] * lyv);
      } else {
        std::fill(Lt, Lt + Wob, T(0));
      }
    }
    offset_dots<T, UNIT, XB>(c, ys[a], q, kb, L + a * g.ka * Wob);
  }
  T* mx = tmp;
  T* sum = tmp + Wob;
  std::copy(L, L + Wob, mx);
  for (int64_t t = 1; t < K; ++t)
    for (int64_t x = 0; x < Wob; ++x) mx[x] = std::max(mx[x], L[t * Wob + x]);
  std::fill(sum, sum + Wob, T(0));
  for (int64_t t = 0; t < K; ++t) {
    T* Lt = L + t * Wob;
    for (int64_t x = 0; x < Wob; ++x) {
      Lt[x] = std::exp(Lt[x] - mx[x]);
      sum[x] += Lt[x];
    }
  }
  for (int64_t x = 0; x < Wob; ++x) sum[x] = T(1) / sum[x];
  for (int64_t t = 0; t < K; ++t)
    for (int64_t x = 0; x < Wob; ++x) L[t * Wob + x] *= sum[x];
}

// acc(d, x) = sum_t W_t[x] * rows[a(t)][d][off(t) + x*s]  (the aggregation shape), into out(d, x)
template <typename T, bool UNIT, int64_t XB>
void window_sum(const Ctx<T>& c, const int64_t* ys, const T* __restrict__ Wt, const T* __restrict__ rows,
                T* __restrict__ out) {
  const Geo& g = c.g;
  const int64_t Wob = g.Wob;
  const int64_t* aos = c.aos;
  constexpr int64_t DB = chains<XB>();
  for (int64_t d0 = 0; d0 < g.hd; d0 += DB) {
    const int64_t nb = std::min(DB, g.hd - d0);
    for (int64_t x0 = 0; x0 < Wob; x0 += XB) {
      T acc[DB][XB];
      for (int64_t b = 0; b < DB; ++b)
        for (int64_t j = 0; j < XB; ++j) acc[b][j] = 0;
      for (int64_t a = 0; a < g.ka; ++a) {
        const T* base[DB];
        for (int64_t b = 0; b < DB; ++b)  // spare chains repeat the last channel
          base[b] = rows + ((d0 + std::min(b, nb - 1)) * g.H + ys[a]) * g.RS + x0;
        for (int64_t cc = 0; cc < g.ka; ++cc) {
          const T* __restrict__ w = Wt + (a * g.ka + cc) * Wob + x0;
          const int64_t ao = UNIT ? cc * g.dil : aos[cc];
          for (int64_t b = 0; b < DB; ++b)
            for (int64_t j = 0; j < XB; ++j) acc[b][j] += w[j] * base[b][ao + j];
        }
      }
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < XB; ++j) out[(d0 + b) * Wob + x0 + j] = acc[b][j];
    }
  }
}

template <typename T>
struct AttBuf {  // per-thread scratch of the attention path
  std::vector<T> q, r, kb, vb, L, dP, tmp, go, acc, gkb, gvb;
  std::vector<double> D;
  std::vector<int64_t> ys;
  explicit AttBuf(const Geo& g, bool backward) : ys(g.ka) {
    const int64_t K = g.ka * g.ka, rows = g.hd * g.H * g.RS;
    q.assign(g.hd * g.Wob, 0);
    r.assign(2 * g.Wob, 0);
    kb.assign(rows, 0);
    vb.assign(rows, 0);
    L.assign(K * g.Wob, 0);
    tmp.assign(2 * g.Wob, 0);
    acc.assign(g.hd * g.Wob, 0);
    if (backward) {
      dP.assign(K * g.Wob, 0);
      go.assign(g.hd * g.Wob, 0);
      gkb.assign(rows, 0);
      gvb.assign(rows, 0);
      D.assign(g.Wob, 0);
    }
  }
};

template <typename T, bool UNIT, int64_t XB>
void attention_forward(const Ctx<T>& c, int64_t n, T rate1, T* __restrict__ out, AttBuf<T>& w) {
  const Geo& g = c.g;
  const int64_t b = n / g.heads, h = n % g.heads;
  pad_map(c, b, 1, h, w.kb.data());
  pad_map(c, b, 2, h, w.vb.data());
  const int64_t* ys = w.ys.data();
  for (int64_t i = 0; i < g.Ho; ++i) {
    for (int64_t a = 0; a < g.ka; ++a) w.ys[a] = c.rh[i * g.s + a * g.dil];
    load_q(c, b, h, i, w.q.data(), w.r.data());
    softmax_row<T, UNIT, XB>(c, ys, w.q.data(), w.r.data(), w.kb.data(), w.L.data(), w.tmp.data());
    window_sum<T, UNIT, XB>(c, ys, w.L.data(), w.vb.data(), w.acc.data());
    for (int64_t d = 0; d < g.hd; ++d) {
      T* o = out + ((b * g.C + h * g.hd + d) * g.Ho + i) * g.Wo;
      const T* ad = w.acc.data() + d * g.Wob;
      for (int64_t x = 0; x < g.Wo; ++x) o[x] += rate1 * ad[x];
    }
  }
}

template <typename T, bool UNIT, int64_t XB>
void attention_backward(const Ctx<T>& c, int64_t n, T rate1, const T* __restrict__ gout, T* __restrict__ gqkv,
                        double* __restrict__ gwp, double& grate1, AttBuf<T>& w) {
  const Geo& g = c.g;
  const int64_t b = n / g.heads, h = n % g.heads, Wob = g.Wob, K = g.ka * g.ka, s = g.s, HW = g.H * g.W;
  T* q = w.q.data();
  T* r = w.r.data();
  T* L = w.L.data();
  T* dP = w.dP.data();
  T* go = w.go.data();
  T* gq = w.acc.data();
  T* dr = w.tmp.data();
  double* D = w.D.data();
  pad_map(c, b, 1, h, w.kb.data());
  pad_map(c, b, 2, h, w.vb.data());
  std::fill(w.gkb.begin(), w.gkb.end(), T(0));
  std::fill(w.gvb.begin(), w.gvb.end(), T(0));
  const int64_t* ys = w.ys.data();
  for (int64_t i = 0; i < g.Ho; ++i) {
    for (int64_t a = 0; a < g.ka; ++a) w.ys[a] = c.rh[i * s + a * g.dil];
    load_q(c, b, h, i, q, r);
    softmax_row<T, UNIT, XB>(c, ys, q, r, w.kb.data(), L, w.tmp.data());
    for (int64_t d = 0; d < g.hd; ++d) {
      const T* src = gout + ((b * g.C + h * g.hd + d) * g.Ho + i) * g.Wo;
      std::copy(src, src + g.Wo, go + d * Wob);  // tail stays zero
    }
    // dP_t(x) = sum_d gout(d, x) v_t(d, x)
    std::fill(dP, dP + K * Wob, T(0));
    for (int64_t a = 0; a < g.ka; ++a) offset_dots<T, UNIT, XB>(c, ys[a], go, w.vb.data(), dP + a * g.ka * Wob);
    // D = sum_t P_t dP_t (= sum_d gout . att); dS_t = rate1 P_t (dP_t - D), kept in dP
    std::fill(D, D + Wob, 0.0);
    for (int64_t t = 0; t < K; ++t)
      for (int64_t x = 0; x < Wob; ++x) D[x] += double(L[t * Wob + x]) * double(dP[t * Wob + x]);
    for (int64_t x = 0; x < g.Wo; ++x) grate1 += D[x];
    for (int64_t t = 0; t < K; ++t)
      for (int64_t x = 0; x < Wob; ++x) dP[t * Wob + x] = rate1 * L[t * Wob + x] * (dP[t * Wob + x] - T(D[x]));
    // gq = sum_t dS_t k_t (for qs), dr = -sum_t dS_t loc_t
    window_sum<T, UNIT, XB>(c, ys, dP, w.kb.data(), gq);
    if (c.wp) {
      std::fill(dr, dr + 2 * Wob, T(0));
      for (int64_t a = 0; a < g.ka; ++a) {
        const T lyv = c.ly[ys[a]];
        for (int64_t cc = 0; cc < g.ka; ++cc) {
          const T* __restrict__ dS = dP + (a * g.ka + cc) * Wob;
          const T* __restrict__ lx = c.lxp + (UNIT ? cc * g.dil : c.aos[cc]);
          for (int64_t x = 0; x < Wob; ++x) {  // full blocks: the tail of dS is zero
            dr[x] -= dS[x] * lx[x];
            dr[Wob + x] -= dS[x] * lyv;
          }
        }
      }
      for (int64_t d = 0; d < g.hd; ++d) {
        const T w0 = c.wp[2 * d], w1 = c.wp[2 * d + 1];
        double s0 = 0, s1 = 0;
        for (int64_t x = 0; x < g.Wo; ++x) {
          gq[d * Wob + x] += w0 * dr[x] + w1 * dr[Wob + x];
          s0 += q[d * Wob + x] * dr[x];
          s1 += q[d * Wob + x] * dr[Wob + x];
        }
        gwp[2 * d] += s0;
        gwp[2 * d + 1] += s1;
      }
    }
    for (int64_t d = 0; d < g.hd; ++d) {
      T* row = gqkv + (b * 3 * g.C + c.ch(0, h, d)) * HW + i * s * g.W;
      for (int64_t x = 0; x < g.Wo; ++x) row[x * s] += c.scale * gq[d * Wob + x];
    }
    // gk_t += dS_t qs, gv_t += rate1 P_t gout, on the padded maps
    for (int64_t a = 0; a < g.ka; ++a) {
      for (int64_t cc = 0; cc < g.ka; ++cc) {
        const int64_t t = a * g.ka + cc;
        const T* __restrict__ dS = dP + t * Wob;
        const T* __restrict__ Pt = L + t * Wob;
        for (int64_t d = 0; d < g.hd; ++d) {
          const T* __restrict__ qd = q + d * Wob;
          const T* __restrict__ gd = go + d * Wob;
          const int64_t ao = UNIT ? cc * g.dil : c.aos[cc];
          T* __restrict__ gkd = w.gkb.data() + (d * g.H + ys[a]) * g.RS + ao;
          T* __restrict__ gvd = w.gvb.data() + (d * g.H + ys[a]) * g.RS + ao;
          for (int64_t x = 0; x < Wob; ++x) {  // full blocks: the tails of dS, q and gout are zero
            gkd[x] += dS[x] * qd[x];
            gvd[x] += rate1 * Pt[x] * gd[x];
          }
        }
      }
    }
  }
  // fold the padded-map gradients back through the reflection
  fold_map(c, b, 1, h, w.gkb.data(), gqkv);
  fold_map(c, b, 2, h, w.gvb.data(), gqkv);
}

// zero-padded input rows of group grp for output row i: row (u, p) at ib + (u*P + p)*RZ, phase-split
template <typename T>
void conv_rows(const Ctx<T>& c, int64_t b, int64_t grp, int64_t i, T* __restrict__ ib) {
  const Geo& g = c.g;
  const int64_t P = 3 * g.heads;
  for (int64_t u = 0; u < g.kc; ++u) {
    const int64_t y = i * g.s + u - g.pad_c;
    for (int64_t p = 0; p < P; ++p) {
      T* dst = ib + (u * P + p) * g.RZ;
      const bool inside = y >= 0 && y < g.H;
      const T* row = inside ? c.chan(b, c.piece(p, grp)) + y * g.W : nullptr;
      if (g.s == 1) {
        if (inside) std::copy(row, row + g.W, dst + g.pad_c);
        else std::fill(dst + g.pad_c, dst + g.pad_c + g.W, T(0));
      } else {
        for (int64_t ph = 0; ph < g.s; ++ph)
          for (int64_t xz = ph, m = 0; xz < g.pad_c + g.W; xz += g.s, ++m)
            if (xz >= g.pad_c) dst[ph * g.Lz + m] = inside ? row[xz - g.pad_c] : T(0);
      }
    }
  }
}

// convolution path of group grp, batch b: out[o] = rate2 * (bias[o] + sum Wc[o,p,u,v] in[p](i*s+u-pc, x*s+v-pc))
template <typename T, bool UNIT, int64_t XB>
void conv_forward(const Ctx<T>& c, int64_t b, int64_t grp, const T* __restrict__ wc, const T* __restrict__ bias,
                  T rate2, T* __restrict__ out, std::vector<T>& ib) {
  const Geo& g = c.g;
  const int64_t P = 3 * g.heads, M = g.C / g.hd, kc = g.kc;
  for (int64_t i = 0; i < g.Ho; ++i) {
    conv_rows(c, b, grp, i, ib.data());
    constexpr int64_t MB = chains<XB>();  // output channels per pass: independent chains, shared loads
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
      const int64_t nb = std::min(MB, M - m0);
      int64_t o[MB];
      for (int64_t k = 0; k < MB; ++k) o[k] = grp * M + m0 + std::min(k, nb - 1);  // spares repeat the last
      for (int64_t x0 = 0; x0 < g.Wob; x0 += XB) {
        T acc[MB][XB];
        for (int64_t k = 0; k < MB; ++k) {
          const T b0 = bias ? bias[o[k]] : T(0);
          for (int64_t j = 0; j < XB; ++j) acc[k][j] = b0;
        }
        for (int64_t up = 0; up < kc * P; ++up) {
          const int64_t u = up / P, p = up % P;
          const T* __restrict__ src0 = ib.data() + up * g.RZ + x0;
          for (int64_t v = 0; v < kc; ++v) {
            const T* __restrict__ src = src0 + (UNIT ? v : c.zos[v]);
            for (int64_t k = 0; k < MB; ++k) {
              const T wv = wc[((o[k] * P + p) * kc + u) * kc + v];
              for (int64_t j = 0; j < XB; ++j) acc[k][j] += wv * src[j];
            }
          }
        }
        const int64_t n = std::min(XB, g.Wo - x0);
        for (int64_t k = 0; k < nb; ++k) {
          T* orow = out + ((b * g.C + o[k]) * g.Ho + i) * g.Wo;
          for (int64_t j = 0; j < n; ++j) orow[x0 + j] = rate2 * acc[k][j];
        }
      }
    }
  }
}

// conv path backward for group grp over the whole batch.  The input gradient
// (stride 1) is the adjoint convolution read from zero-padded gradient rows, so
// each block sums its M*kc terms in registers; the weight gradient is kept as
// per-lane partial sums (gvec) and reduced once at the end, so no short-row
// horizontal sums are needed.
template <typename T, bool UNIT, int64_t XB>
void conv_backward(const Ctx<T>& c, int64_t grp, const T* __restrict__ wc, T rate2, const T* __restrict__ gout,
                   T* __restrict__ gqkv, double* __restrict__ gw, double* __restrict__ gsum, std::vector<T>& ib,
                   std::vector<T>& gb, std::vector<T>& grow, std::vector<T>& gvec) {
  // gw accumulates sum gout * in (without rate2); gsum[m] = sum of gout over output channel grp*M + m
  const Geo& g = c.g;
  const int64_t P = 3 * g.heads, M = g.C / g.hd, kc = g.kc, s = g.s, HW = g.H * g.W;
  const int64_t GW = grow.size() / M, lead = kc - 1;
  std::fill(gvec.begin(), gvec.end(), T(0));
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t i = 0; i < g.Ho; ++i) {
      conv_rows(c, b, grp, i, ib.data());
      for (int64_t m = 0; m < M; ++m) {
        const T* src = gout + ((b * g.C + grp * M + m) * g.Ho + i) * g.Wo;
        std::copy(src, src + g.Wo, grow.data() + m * GW + lead);  // zeros around it stay
        double sm = 0;
        for (int64_t x = 0; x < g.Wo; ++x) sm += src[x];
        gsum[m] += sm;
      }
      // weight gradient partials: gvec[((m*P + p)*kc + u)*kc + v][j] += sum over x = j (mod LANES) of g_m * in
      for (int64_t up = 0; up < kc * P; ++up) {
        const int64_t u = up / P, p = up % P;
        const T* __restrict__ in0 = ib.data() + up * g.RZ;
        for (int64_t m = 0; m < M; ++m) {
          const T* __restrict__ gm = grow.data() + m * GW + lead;
          for (int64_t v = 0; v < kc; ++v) {
            T* __restrict__ gv = gvec.data() + (((m * P + p) * kc + u) * kc + v) * LANES;
            const T* __restrict__ src = in0 + (UNIT ? v : c.zos[v]);
            T acc[LANES];
            for (int64_t j = 0; j < LANES; ++j) acc[j] = gv[j];
            for (int64_t x0 = 0; x0 < g.Wob; x0 += LANES)
              for (int64_t j = 0; j < LANES; ++j) acc[j] += gm[x0 + j] * src[x0 + j];
            for (int64_t j = 0; j < LANES; ++j) gv[j] = acc[j];
          }
        }
      }
      // input gradient on the zero-padded rows: gb[up][xz] = sum_{m,v} rate2 W[m,p,u,v] g_m[(xz - v) / s]
      if (UNIT) {
        for (int64_t up = 0; up < kc * P; ++up) {
          const int64_t u = up / P, p = up % P;
          T* dst = gb.data() + up * g.Wzb;
          for (int64_t x0 = 0; x0 < g.Wz; x0 += XB) {
            T acc[XB] = {};
            for (int64_t m = 0; m < M; ++m) {
              const T* wrow = wc + (((grp * M + m) * P + p) * kc + u) * kc;
              for (int64_t v = 0; v < kc; ++v) {
                const T wv = rate2 * wrow[v];
                const T* __restrict__ src = grow.data() + m * GW + lead + x0 - v;
                for (int64_t j = 0; j < XB; ++j) acc[j] += wv * src[j];
              }
            }
            const int64_t n = std::min(XB, g.Wz - x0);
            for (int64_t j = 0; j < n; ++j) dst[x0 + j] = acc[j];
          }
        }
      } else {
        std::fill(gb.begin(), gb.end(), T(0));
        for (int64_t up = 0; up < kc * P; ++up) {
          const int64_t u = up / P, p = up % P;
          T* __restrict__ gdst0 = gb.data() + up * g.Wzb;
          for (int64_t m = 0; m < M; ++m) {
            const T* wrow = wc + (((grp * M + m) * P + p) * kc + u) * kc;
            const T* __restrict__ gm = grow.data() + m * GW + lead;
            for (int64_t v = 0; v < kc; ++v) {
              const T wv = rate2 * wrow[v];
              T* __restrict__ gdst = gdst0 + v;
              for (int64_t x = 0; x < g.Wo; ++x) gdst[x * s] += wv * gm[x];
            }
          }
        }
      }
      for (int64_t u = 0; u < kc; ++u) {
        const int64_t y = i * s + u - g.pad_c;
        if (y < 0 || y >= g.H) continue;
        for (int64_t p = 0; p < P; ++p) {
          T* gin = gqkv + (b * 3 * g.C + c.piece(p, grp)) * HW + y * g.W;
          const T* src = gb.data() + (u * P + p) * g.Wzb + g.pad_c;
          for (int64_t x = 0; x < g.W; ++x) gin[x] += src[x];
        }
      }
    }
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t uv = 0; uv < kc * kc; ++uv) {
        const T* gv = gvec.data() + ((m * P + p) * kc * kc + uv) * LANES;
        double sum = 0;
        for (int64_t j = 0; j < LANES; ++j) sum += gv[j];
        gw[(((grp * M + m) * P + p) * kc * kc) + uv] += sum;
      }
}

Geo make_geo(const at::Tensor& qkv, int64_t heads, int64_t ka, int64_t kc, int64_t s, int64_t dil) {
  const int64_t Wo = (qkv.size(3) - 1) / s + 1;
  const int64_t xb = Wo > 32 ? 64 : Wo > 16 ? 32 : 16;
  Geo g;
  g.B = qkv.size(0);
  g.heads = heads;
  g.C = qkv.size(1) / 3;
  g.hd = g.C / heads;
  g.H = qkv.size(2);
  g.W = qkv.size(3);
  g.Ho = (g.H - 1) / s + 1;
  g.Wo = (g.W - 1) / s + 1;
  g.xb = xb;
  g.Wob = round_up(g.Wo, xb);
  g.ka = ka;
  g.kc = kc;
  g.s = s;
  g.dil = dil;
  g.pad_a = dil * (ka - 1) / 2;
  g.pad_c = kc / 2;
  g.Wp = g.W + 2 * g.pad_a;
  g.Lp = std::max((g.Wp + s - 1) / s, g.Wob + (ka - 1) * dil / s + 1) + 1;  // slack for the register blocks
  g.RS = s * g.Lp;
  g.Wz = g.W + 2 * g.pad_c;
  g.Wzb = std::max(g.Wz, kc - 1 + g.Wob * s) + 1;
  g.Lz = std::max((g.Wz + s - 1) / s, g.Wob + (kc - 1) / s + 1) + 1;
  g.RZ = s * g.Lz;
  return g;
}

template <typename T>
Ctx<T> make_ctx(const Geo& g, const at::Tensor& qkv, const at::Tensor& rh, const at::Tensor& rw,
                const at::Tensor& lxp, const at::Tensor& ly, const at::Tensor& wp, double scale,
                std::vector<int64_t>& aos) {
  aos.resize(g.ka + g.kc);
  for (int64_t cc = 0; cc < g.ka; ++cc) aos[cc] = g.at(cc * g.dil);
  for (int64_t v = 0; v < g.kc; ++v) aos[g.ka + v] = g.atz(v);
  Ctx<T> c;
  c.aos = aos.data();
  c.zos = aos.data() + g.ka;
  c.g = g;
  c.qkv = qkv.data_ptr<T>();
  c.rh = rh.data_ptr<int64_t>();
  c.rw = rw.data_ptr<int64_t>();
  c.lxp = lxp.data_ptr<T>();
  c.ly = ly.data_ptr<T>();
  c.wp = wp.defined() ? wp.data_ptr<T>() : nullptr;
  c.scale = T(scale);
  return c;
}

at::Tensor padded_lx(const at::Tensor& lxp, const Geo& g) {
  // location of padded columns, phase-split like the rows, with zero slack for the register blocks
  auto out = at::zeros({g.RS}, lxp.options());
  auto idx = at::arange(g.Wp, lxp.options().dtype(at::kLong));
  out.index_copy_(0, idx.remainder(g.s) * g.Lp + idx.div(g.s, "floor"), lxp);
  return out;
}

}  // namespace

// unit or general stride, times the register block width
#define DISPATCH_BLOCK(g, fn, ...)                                   \
  do {                                                               \
    if ((g).s == 1) {                                                \
      if ((g).xb == 64) fn<T, true, 64>(__VA_ARGS__);                \
      else if ((g).xb == 32) fn<T, true, 32>(__VA_ARGS__);           \
      else fn<T, true, 16>(__VA_ARGS__);                             \
    } else {                                                         \
      if ((g).xb == 64) fn<T, false, 64>(__VA_ARGS__);               \
      else if ((g).xb == 32) fn<T, false, 32>(__VA_ARGS__);          \
      else fn<T, false, 16>(__VA_ARGS__);                            \
    }                                                                \
  } while (0)

// qkv (B, 3C, H, W) contiguous; wp (hd, 2) or none; wc (C, 3*heads, kc, kc) or none (no conv path);
// has_att false: no attention path.  Returns out (B, C, Ho, Wo).
at::Tensor stage2_forward(at::Tensor qkv, c10::optional<at::Tensor> wp_, c10::optional<at::Tensor> wc_,
                          c10::optional<at::Tensor> bias_, double rate1, double rate2, at::Tensor rh, at::Tensor rw,
                          at::Tensor lxp, at::Tensor ly, int64_t heads, bool has_att, int64_t ka, int64_t kc,
                          int64_t s, int64_t dil, double scale) {
  TORCH_CHECK(qkv.is_contiguous() && qkv.dim() == 4, "qkv must be a contiguous (B, 3C, H, W) tensor");
  const Geo g = make_geo(qkv, heads, ka, kc, s, dil);
  at::Tensor wp = wp_.has_value() ? wp_->contiguous() : at::Tensor();
  at::Tensor wc = wc_.has_value() ? wc_->contiguous() : at::Tensor();
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor lx = padded_lx(lxp, g);
  auto out = wc.defined() ? at::empty({g.B, g.C, g.Ho, g.Wo}, qkv.options())
                          : at::zeros({g.B, g.C, g.Ho, g.Wo}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "acmix_stage2_forward", [&] {
    using T = scalar_t;
    std::vector<int64_t> aos;
    const Ctx<T> c = make_ctx<T>(g, qkv, rh, rw, lx, ly, wp, scale, aos);
    T* o = out.data_ptr<T>();
    if (wc.defined()) {
      const T* w = wc.data_ptr<T>();
      const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
      at::parallel_for(0, g.B * g.hd, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> ib(g.kc * 3 * g.heads * g.RZ, T(0));
        for (int64_t j = begin; j < end; ++j) {
          DISPATCH_BLOCK(g, conv_forward, c, j / g.hd, j % g.hd, w, bp, T(rate2), o, ib);
        }
      });
    }
    if (has_att) {
      at::parallel_for(0, g.B * heads, 1, [&](int64_t begin, int64_t end) {
        AttBuf<T> buf(g, false);
        for (int64_t n = begin; n < end; ++n) {
          DISPATCH_BLOCK(g, attention_forward, c, n, T(rate1), o, buf);
        }
      });
    }
  });
  return out;
}

// Returns gqkv, gwp (hd, 2), gwc (C, 3*heads, kc, kc), gbias (C) -- undefined where the input is --
// grate1 (1), grate2 (1).
std::vector<at::Tensor> stage2_backward(at::Tensor gout, at::Tensor qkv, c10::optional<at::Tensor> wp_,
                                        c10::optional<at::Tensor> wc_, c10::optional<at::Tensor> bias_,
                                        double rate1, double rate2, at::Tensor rh, at::Tensor rw, at::Tensor lxp,
                                        at::Tensor ly, int64_t heads, bool has_att, int64_t ka, int64_t kc,
                                        int64_t s, int64_t dil, double scale) {
  gout = gout.contiguous();
  const Geo g = make_geo(qkv, heads, ka, kc, s, dil);
  at::Tensor wp = wp_.has_value() ? wp_->contiguous() : at::Tensor();
  at::Tensor wc = wc_.has_value() ? wc_->contiguous() : at::Tensor();
  at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor lx = padded_lx(lxp, g);
  auto gqkv = at::zeros_like(qkv);
  const int64_t N = g.B * heads;
  // parameter gradients are long reductions: accumulate them in double
  const auto f64 = qkv.options().dtype(at::kDouble);
  auto gwp_n = wp.defined() ? at::zeros({N, g.hd, 2}, f64) : at::Tensor();
  auto grate1_n = at::zeros({N}, f64);
  auto gwc = wc.defined() ? at::zeros(wc.sizes(), f64) : at::Tensor();
  auto gsum = wc.defined() ? at::zeros({g.C}, f64) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "acmix_stage2_backward", [&] {
    using T = scalar_t;
    std::vector<int64_t> aos;
    const Ctx<T> c = make_ctx<T>(g, qkv, rh, rw, lx, ly, wp, scale, aos);
    const T* go = gout.data_ptr<T>();
    T* gq = gqkv.data_ptr<T>();
    if (has_att) {
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        AttBuf<T> buf(g, true);
        for (int64_t n = begin; n < end; ++n) {
          double* gwpn = gwp_n.defined() ? gwp_n.data_ptr<double>() + n * g.hd * 2 : nullptr;
          double& gr1 = grate1_n.data_ptr<double>()[n];
          DISPATCH_BLOCK(g, attention_backward, c, n, T(rate1), go, gq, gwpn, gr1, buf);
        }
      });
    }
    if (wc.defined()) {
      const T* w = wc.data_ptr<T>();
      at::parallel_for(0, g.hd, 1, [&](int64_t begin, int64_t end) {
        const int64_t P = 3 * g.heads, M = g.C / g.hd;
        const int64_t GW = g.kc - 1 + g.Wz + 2 * g.xb;  // gradient row with zero lead and tail
        std::vector<T> ib(g.kc * P * g.RZ, T(0)), gb(g.kc * P * g.Wzb, T(0)), grow(M * GW, T(0));
        std::vector<T> gvec(M * P * g.kc * g.kc * LANES);
        for (int64_t grp = begin; grp < end; ++grp) {
          double* gs = gsum.data_ptr<double>() + grp * M;
          double* gw = gwc.data_ptr<double>();
          DISPATCH_BLOCK(g, conv_backward, c, grp, w, T(rate2), go, gq, gw, gs, ib, gb, grow, gvec);
        }
      });
    }
  });
  const auto dt = qkv.scalar_type();
  at::Tensor gwp = gwp_n.defined() ? gwp_n.sum(0).to(dt) : at::Tensor();
  at::Tensor grate1 = grate1_n.sum().reshape({1}).to(dt);
  at::Tensor grate2 = at::zeros({1}, qkv.options()), gbias, gw;
  if (wc.defined()) {
    // gwc holds sum gout*in: d rate2 = <Wc, gwc> + <bias, sum gout>
    at::Tensor g2 = (wc.to(at::kDouble) * gwc).sum();
    if (bias.defined()) {
      g2 = g2 + (bias.to(at::kDouble) * gsum).sum();
      gbias = (gsum * rate2).to(dt);
    }
    grate2 = g2.reshape({1}).to(dt);
    gw = (gwc * rate2).to(dt);
  }
  return {gqkv, gwp, gw, gbias, grate1, grate2};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stage2_forward", &stage2_forward, "ACmix Stage II forward (CPU)");
  m.def("stage2_backward", &stage2_backward, "ACmix Stage II backward (CPU)");
}
