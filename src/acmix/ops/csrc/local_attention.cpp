// ACmix local attention core for CPU: forward and hand-written backward.
//
// One (batch, head) pair n at a time (parallel over n).  For every output row i
// and window row a, the key / value source row y = rh[i*s + a*dil] is gathered
// once into a reflect-padded row buffer; the window column offset c is then a
// plain shift of that buffer, so the inner loops run over the output x
// coordinate with unit stride (stride-1 layers) and vectorise.
//
// logit(t, x) = scale * sum_d q[d, x] * kp[d, x*s + c*dil] - (r0[x] * lx(src) + r1[x] * ly(y))
// where r = W_p^T (scale * q) carries the position term (SPEC rewrite 1).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Geometry {
  int64_t heads, hd, H, W, Ho, Wo, ka, s, dil, Wp;
};

template <typename T>
struct KV {  // strided (B, heads, hd, H, W) view with unit x stride and row stride W
  const T* base;
  int64_t sb, sh, sd;
  const T* at(int64_t n, int64_t heads) const { return base + (n / heads) * sb + (n % heads) * sh; }
};

template <typename T>
inline void gather_row(const T* __restrict__ src, int64_t sd, int64_t hd, int64_t y, int64_t W,
                       const int64_t* __restrict__ rw, int64_t Wp, T* __restrict__ dst) {
  for (int64_t d = 0; d < hd; ++d) {
    const T* row = src + d * sd + y * W;
    T* out = dst + d * Wp;
    for (int64_t xp = 0; xp < Wp; ++xp) out[xp] = row[rw[xp]];
  }
}

template <typename T, bool UNIT>
void forward_one(int64_t n, const Geometry& g, T scale, const T* __restrict__ q, const T* __restrict__ r,
                 const KV<T>& k, const KV<T>& v, const int64_t* __restrict__ rh, const int64_t* __restrict__ rw,
                 const T* __restrict__ lxp, const T* __restrict__ ly, T* __restrict__ out, T* __restrict__ P,
                 std::vector<T>& rowbuf, std::vector<T>& logit) {
  const int64_t K = g.ka * g.ka, HoWo = g.Ho * g.Wo, Wo = g.Wo, s = g.s;
  const T* qn = q + n * g.hd * HoWo;
  const T* rn = r ? r + n * 2 * HoWo : nullptr;
  const T* kn = k.at(n, g.heads);
  const T* vn = v.at(n, g.heads);
  T* on = out + n * g.hd * HoWo;
  T* pn = P + n * K * HoWo;
  T* buf = rowbuf.data();
  T* L = logit.data();
  for (int64_t i = 0; i < g.Ho; ++i) {
    for (int64_t a = 0; a < g.ka; ++a) {
      const int64_t y = rh[i * s + a * g.dil];
      gather_row(kn, k.sd, g.hd, y, g.W, rw, g.Wp, buf);
      for (int64_t c = 0; c < g.ka; ++c) {
        T* __restrict__ Lt = L + (a * g.ka + c) * Wo;
        const int64_t off = c * g.dil;
        if (rn) {
          const T* r0 = rn + i * Wo;
          const T* r1 = rn + HoWo + i * Wo;
          const T lyv = ly[y];
          for (int64_t x = 0; x < Wo; ++x) Lt[x] = -(r0[x] * lxp[off + (UNIT ? x : x * s)] + r1[x] * lyv);
        } else {
          for (int64_t x = 0; x < Wo; ++x) Lt[x] = 0;
        }
        for (int64_t d = 0; d < g.hd; ++d) {
          const T* __restrict__ qd = qn + d * HoWo + i * Wo;
          const T* __restrict__ kd = buf + d * g.Wp + off;
          for (int64_t x = 0; x < Wo; ++x) Lt[x] += scale * qd[x] * kd[UNIT ? x : x * s];
        }
      }
    }
    // softmax over the K window positions, per output pixel
    T* mx = L + K * Wo;
    T* sum = mx + Wo;
    for (int64_t x = 0; x < Wo; ++x) mx[x] = L[x];
    for (int64_t t = 1; t < K; ++t)
      for (int64_t x = 0; x < Wo; ++x) mx[x] = std::max(mx[x], L[t * Wo + x]);
    for (int64_t x = 0; x < Wo; ++x) sum[x] = 0;
    for (int64_t t = 0; t < K; ++t) {
      T* Lt = L + t * Wo;
      for (int64_t x = 0; x < Wo; ++x) {
        Lt[x] = std::exp(Lt[x] - mx[x]);
        sum[x] += Lt[x];
      }
    }
    for (int64_t x = 0; x < Wo; ++x) sum[x] = T(1) / sum[x];
    for (int64_t t = 0; t < K; ++t) {
      T* Pt = pn + t * HoWo + i * Wo;
      const T* Lt = L + t * Wo;
      for (int64_t x = 0; x < Wo; ++x) Pt[x] = Lt[x] * sum[x];
    }
    // weighted sum of the values
    for (int64_t d = 0; d < g.hd; ++d) std::fill(on + d * HoWo + i * Wo, on + d * HoWo + (i + 1) * Wo, T(0));
    for (int64_t a = 0; a < g.ka; ++a) {
      const int64_t y = rh[i * s + a * g.dil];
      gather_row(vn, v.sd, g.hd, y, g.W, rw, g.Wp, buf);
      for (int64_t c = 0; c < g.ka; ++c) {
        const T* __restrict__ Pt = pn + (a * g.ka + c) * HoWo + i * Wo;
        const int64_t off = c * g.dil;
        for (int64_t d = 0; d < g.hd; ++d) {
          T* __restrict__ od = on + d * HoWo + i * Wo;
          const T* __restrict__ vd = buf + d * g.Wp + off;
          for (int64_t x = 0; x < Wo; ++x) od[x] += Pt[x] * vd[UNIT ? x : x * s];
        }
      }
    }
  }
}

template <typename T, bool UNIT>
void backward_one(int64_t n, const Geometry& g, T scale, const T* __restrict__ q, const T* __restrict__ r,
                  const KV<T>& k, const KV<T>& v, const int64_t* __restrict__ rh, const int64_t* __restrict__ rw,
                  const T* __restrict__ lxp, const T* __restrict__ ly, const T* __restrict__ out,
                  const T* __restrict__ P, const T* __restrict__ gout, T* __restrict__ gq, T* __restrict__ gr,
                  T* __restrict__ gk, T* __restrict__ gv, std::vector<T>& work) {
  const int64_t K = g.ka * g.ka, HoWo = g.Ho * g.Wo, HW = g.H * g.W, Wo = g.Wo, Wp = g.Wp, s = g.s;
  const T* qn = q + n * g.hd * HoWo;
  const T* rn = r ? r + n * 2 * HoWo : nullptr;
  const T* kn = k.at(n, g.heads);
  const T* vn = v.at(n, g.heads);
  const T* on = out + n * g.hd * HoWo;
  const T* pn = P + n * K * HoWo;
  const T* gon = gout + n * g.hd * HoWo;
  T* gqn = gq + n * g.hd * HoWo;
  T* grn = gr ? gr + n * 2 * HoWo : nullptr;
  T* gkn = gk + n * g.hd * HW;
  T* gvn = gv + n * g.hd * HW;
  T* kbuf = work.data();
  T* vbuf = kbuf + g.hd * Wp;
  T* gkbuf = vbuf + g.hd * Wp;
  T* gvbuf = gkbuf + g.hd * Wp;
  T* D = gvbuf + g.hd * Wp;
  T* dS = D + Wo;
  for (int64_t i = 0; i < g.Ho; ++i) {
    for (int64_t x = 0; x < Wo; ++x) D[x] = 0;
    for (int64_t d = 0; d < g.hd; ++d) {
      const T* od = on + d * HoWo + i * Wo;
      const T* gd = gon + d * HoWo + i * Wo;
      for (int64_t x = 0; x < Wo; ++x) D[x] += od[x] * gd[x];
    }
    for (int64_t a = 0; a < g.ka; ++a) {
      const int64_t y = rh[i * s + a * g.dil];
      gather_row(kn, k.sd, g.hd, y, g.W, rw, Wp, kbuf);
      gather_row(vn, v.sd, g.hd, y, g.W, rw, Wp, vbuf);
      std::fill(gkbuf, gkbuf + 2 * g.hd * Wp, T(0));
      for (int64_t c = 0; c < g.ka; ++c) {
        const T* __restrict__ Pt = pn + (a * g.ka + c) * HoWo + i * Wo;
        const int64_t off = c * g.dil;
        for (int64_t x = 0; x < Wo; ++x) dS[x] = 0;
        for (int64_t d = 0; d < g.hd; ++d) {
          const T* __restrict__ gd = gon + d * HoWo + i * Wo;
          const T* __restrict__ vd = vbuf + d * Wp + off;
          for (int64_t x = 0; x < Wo; ++x) dS[x] += gd[x] * vd[UNIT ? x : x * s];
        }
        for (int64_t x = 0; x < Wo; ++x) dS[x] = Pt[x] * (dS[x] - D[x]);
        if (rn) {
          T* g0 = grn + i * Wo;
          T* g1 = grn + HoWo + i * Wo;
          const T lyv = ly[y];
          for (int64_t x = 0; x < Wo; ++x) {
            g0[x] -= dS[x] * lxp[off + (UNIT ? x : x * s)];
            g1[x] -= dS[x] * lyv;
          }
        }
        for (int64_t d = 0; d < g.hd; ++d) {
          const T* __restrict__ qd = qn + d * HoWo + i * Wo;
          const T* __restrict__ gd = gon + d * HoWo + i * Wo;
          const T* __restrict__ kd = kbuf + d * Wp + off;
          T* __restrict__ gqd = gqn + d * HoWo + i * Wo;
          T* __restrict__ gkd = gkbuf + d * Wp + off;
          T* __restrict__ gvd = gvbuf + d * Wp + off;
          for (int64_t x = 0; x < Wo; ++x) {
            const int64_t xs = UNIT ? x : x * s;
            gqd[x] += scale * dS[x] * kd[xs];
            gkd[xs] += scale * dS[x] * qd[x];
            gvd[xs] += Pt[x] * gd[x];
          }
        }
      }
      for (int64_t d = 0; d < g.hd; ++d) {
        T* gkr = gkn + d * HW + y * g.W;
        T* gvr = gvn + d * HW + y * g.W;
        const T* bk = gkbuf + d * Wp;
        const T* bv = gvbuf + d * Wp;
        for (int64_t xp = 0; xp < Wp; ++xp) {
          gkr[rw[xp]] += bk[xp];
          gvr[rw[xp]] += bv[xp];
        }
      }
    }
  }
}

Geometry geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& rw, int64_t ka, int64_t s,
                  int64_t dil) {
  Geometry g;
  g.heads = k.size(1);
  g.hd = k.size(2);
  g.H = k.size(3);
  g.W = k.size(4);
  g.Ho = q.size(3);
  g.Wo = q.size(4);
  g.ka = ka;
  g.s = s;
  g.dil = dil;
  g.Wp = rw.size(0);
  return g;
}

void check_kv(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 5 && t.stride(4) == 1 && t.stride(3) == t.size(4),
              name, " must be (B, heads, hd, H, W) with contiguous rows");
}

}  // namespace

std::vector<at::Tensor> local_attention_forward(at::Tensor q, c10::optional<at::Tensor> r, at::Tensor k,
                                                at::Tensor v, at::Tensor rh, at::Tensor rw, at::Tensor lx,
                                                at::Tensor ly, double scale, int64_t ka, int64_t s, int64_t dil) {
  TORCH_CHECK(q.is_contiguous(), "q must be contiguous");
  check_kv(k, "k");
  check_kv(v, "v");
  TORCH_CHECK(k.strides() == v.strides(), "k and v must share strides");
  const Geometry g = geometry(q, k, rw, ka, s, dil);
  const int64_t N = q.size(0) * q.size(1);
  auto out = at::empty({q.size(0), g.heads * g.hd, g.Ho, g.Wo}, q.options());
  auto P = at::empty({N, ka * ka, g.Ho, g.Wo}, q.options());
  at::Tensor rc = r.has_value() ? r->contiguous() : at::Tensor();
  at::Tensor lxp = lx.index_select(0, rw).contiguous();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "acmix_local_attention_forward", [&] {
    using T = scalar_t;
    KV<T> kk{k.data_ptr<T>(), k.stride(0), k.stride(1), k.stride(2)};
    KV<T> vv{v.data_ptr<T>(), v.stride(0), v.stride(1), v.stride(2)};
    const T* rp = rc.defined() ? rc.data_ptr<T>() : nullptr;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> rowbuf(g.hd * g.Wp), logit((ka * ka + 2) * g.Wo);
      for (int64_t n = begin; n < end; ++n) {
        if (s == 1)
          forward_one<T, true>(n, g, T(scale), q.data_ptr<T>(), rp, kk, vv, rh.data_ptr<int64_t>(),
                               rw.data_ptr<int64_t>(), lxp.data_ptr<T>(), ly.data_ptr<T>(), out.data_ptr<T>(),
                               P.data_ptr<T>(), rowbuf, logit);
        else
          forward_one<T, false>(n, g, T(scale), q.data_ptr<T>(), rp, kk, vv, rh.data_ptr<int64_t>(),
                                rw.data_ptr<int64_t>(), lxp.data_ptr<T>(), ly.data_ptr<T>(), out.data_ptr<T>(),
                                P.data_ptr<T>(), rowbuf, logit);
      }
    });
  });
  return {out, P};
}

std::vector<at::Tensor> local_attention_backward(at::Tensor gout, at::Tensor out, at::Tensor P, at::Tensor q,
                                                 c10::optional<at::Tensor> r, at::Tensor k, at::Tensor v,
                                                 at::Tensor rh, at::Tensor rw, at::Tensor lx, at::Tensor ly,
                                                 double scale, int64_t ka, int64_t s, int64_t dil) {
  gout = gout.contiguous();
  const Geometry g = geometry(q, k, rw, ka, s, dil);
  const int64_t N = q.size(0) * q.size(1);
  auto gq = at::zeros_like(q);
  at::Tensor rc = r.has_value() ? r->contiguous() : at::Tensor();
  at::Tensor gr = rc.defined() ? at::zeros_like(rc) : at::Tensor();
  auto gk = at::zeros({q.size(0), g.heads, g.hd, g.H, g.W}, q.options());
  auto gv = at::zeros_like(gk);
  at::Tensor lxp = lx.index_select(0, rw).contiguous();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "acmix_local_attention_backward", [&] {
    using T = scalar_t;
    KV<T> kk{k.data_ptr<T>(), k.stride(0), k.stride(1), k.stride(2)};
    KV<T> vv{v.data_ptr<T>(), v.stride(0), v.stride(1), v.stride(2)};
    const T* rp = rc.defined() ? rc.data_ptr<T>() : nullptr;
    T* grp = gr.defined() ? gr.data_ptr<T>() : nullptr;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> work(4 * g.hd * g.Wp + 2 * g.Wo);
      for (int64_t n = begin; n < end; ++n) {
        if (s == 1)
          backward_one<T, true>(n, g, T(scale), q.data_ptr<T>(), rp, kk, vv, rh.data_ptr<int64_t>(),
                                rw.data_ptr<int64_t>(), lxp.data_ptr<T>(), ly.data_ptr<T>(), out.data_ptr<T>(),
                                P.data_ptr<T>(), gout.data_ptr<T>(), gq.data_ptr<T>(), grp, gk.data_ptr<T>(),
                                gv.data_ptr<T>(), work);
        else
          backward_one<T, false>(n, g, T(scale), q.data_ptr<T>(), rp, kk, vv, rh.data_ptr<int64_t>(),
                                 rw.data_ptr<int64_t>(), lxp.data_ptr<T>(), ly.data_ptr<T>(), out.data_ptr<T>(),
                                 P.data_ptr<T>(), gout.data_ptr<T>(), gq.data_ptr<T>(), grp, gk.data_ptr<T>(),
                                 gv.data_ptr<T>(), work);
      }
    });
  });
  return {gq, gr, gk, gv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("local_attention_forward", &local_attention_forward, "ACmix local attention forward (CPU)");
  m.def("local_attention_backward", &local_attention_backward, "ACmix local attention backward (CPU)");
}
