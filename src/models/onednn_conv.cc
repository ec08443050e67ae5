// oneDNN convolutions as XLA FFI handlers: forward, input gradient and kernel gradient of an NHWC/HWIO float32
// convolution (every conv of the paper's nets). Built and loaded by src/models/onednn.py; see its docstring.
// oneDNN is the CPU kernel library PyTorch uses: on AVX-512 it runs these convolutions 1.2-4x faster than
// XLA:CPU's Eigen kernels (README, Speed). Activations stay NHWC; weights are reordered to the layout the
// primitive wants (they are small). Primitives are created once per geometry and cached.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine* e = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *e;
}

// Geometry: N, H, W, C (input), KH, KW, O, Ho, Wo, strides, pads.
struct Geo {
  int64_t n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr;
  auto key() const { return std::make_tuple(n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr); }
  memory::desc src(tag t = tag::nhwc) const { return {{n, c, h, w}, memory::data_type::f32, t}; }
  memory::desc dst(tag t = tag::nhwc) const { return {{n, o, ho, wo}, memory::data_type::f32, t}; }
  memory::desc wei(tag t = tag::hwio) const { return {{o, c, kh, kw}, memory::data_type::f32, t}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

// oneDNN 3 dropped the op descriptors of oneDNN 2: the primitive descriptors take their arguments directly.
#if DNNL_VERSION_MAJOR >= 3
#define CONV_PD(kind, ...) kind::primitive_desc(Engine(), __VA_ARGS__)
#define CONV_PD_HINT(kind, hint, ...) kind::primitive_desc(Engine(), __VA_ARGS__, hint)
#else
#define CONV_PD(kind, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), Engine())
#define CONV_PD_HINT(kind, hint, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), Engine(), hint)
#endif

constexpr auto convolution_direct = dnnl::algorithm::convolution_direct;

dnnl::convolution_forward::primitive_desc FwdPd(const Geo& g) {
  return CONV_PD(dnnl::convolution_forward, dnnl::prop_kind::forward_training, convolution_direct, g.src(),
                 g.wei(tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r());
}

// The primitive of one geometry and the weights layout it wants (reordered from and to HWIO when it differs).
template <class P>
struct Prim {
  P prim;
  memory::desc weights;
  bool reorder_w;
  Prim(const typename P::primitive_desc& pd, const memory::desc& weights, const Geo& g)
      : prim(pd), weights(weights), reorder_w(weights != g.wei()) {}
};
template <class P>
using Cache = std::map<decltype(Geo{}.key()), std::unique_ptr<Prim<P>>>;

std::mutex mu;
template <class P>
const Prim<P>& Cached(Cache<P>& cache, const Geo& g, Prim<P> (*make)(const Geo&)) {
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[g.key()];
  if (!slot) slot = std::make_unique<Prim<P>>(make(g));
  return *slot;
}

Prim<dnnl::convolution_forward> MakeFwd(const Geo& g) {
  auto pd = FwdPd(g);
  return {pd, pd.weights_desc(), g};
}
Prim<dnnl::convolution_backward_data> MakeBwdData(const Geo& g) {
  auto pd = CONV_PD_HINT(dnnl::convolution_backward_data, FwdPd(g), convolution_direct, g.src(), g.wei(tag::any),
                         g.dst(), g.strides(), g.pad_l(), g.pad_r());
  return {pd, pd.weights_desc(), g};
}
Prim<dnnl::convolution_backward_weights> MakeBwdWeights(const Geo& g) {
  auto pd = CONV_PD_HINT(dnnl::convolution_backward_weights, FwdPd(g), convolution_direct, g.src(),
                         g.wei(tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r());
  return {pd, pd.diff_weights_desc(), g};
}

Cache<dnnl::convolution_forward> fwd_cache;
Cache<dnnl::convolution_backward_data> bwd_data_cache;
Cache<dnnl::convolution_backward_weights> bwd_weights_cache;

Geo MakeGeo(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, int64_t sh,
            int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

// Runs `p` with the plain-HWIO weights at `w_ptr`, reordering them to and from the primitive's layout.
template <class P>
ffi::Error Run(const Prim<P>& p, const Geo& g, void* w_ptr, int w_arg, bool w_is_output,
               std::unordered_map<int, memory> args) {
  try {
    dnnl::stream s(Engine());
    memory user_w(g.wei(), Engine(), w_ptr);
    memory prim_w = p.reorder_w ? memory(p.weights, Engine()) : user_w;
    if (p.reorder_w && !w_is_output) dnnl::reorder(user_w, prim_w).execute(s, user_w, prim_w);
    args[w_arg] = prim_w;
    p.prim.execute(s, args);
    if (p.reorder_w && w_is_output) dnnl::reorder(prim_w, user_w).execute(s, prim_w, user_w);
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Cached(fwd_cache, g, MakeFwd), g, w.typed_data(), DNNL_ARG_WEIGHTS, false,
             {{DNNL_ARG_SRC, memory(g.src(), Engine(), x.typed_data())},
              {DNNL_ARG_DST, memory(g.dst(), Engine(), y->typed_data())}});
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Cached(bwd_data_cache, g, MakeBwdData), g, w.typed_data(), DNNL_ARG_WEIGHTS, false,
             {{DNNL_ARG_DIFF_DST, memory(g.dst(), Engine(), dy.typed_data())},
              {DNNL_ARG_DIFF_SRC, memory(g.src(), Engine(), dx->typed_data())}});
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Cached(bwd_weights_cache, g, MakeBwdWeights), g, dw->typed_data(), DNNL_ARG_DIFF_WEIGHTS, true,
             {{DNNL_ARG_SRC, memory(g.src(), Engine(), x.typed_data())},
              {DNNL_ARG_DIFF_DST, memory(g.dst(), Engine(), dy.typed_data())}});
}

}  // namespace

#define CONV_ATTRS                                                                                          \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb").Attr<int64_t>("pl")     \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, ConvFwd,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
