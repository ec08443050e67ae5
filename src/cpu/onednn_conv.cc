// oneDNN convolutions as XLA FFI handlers: forward, input gradient and kernel gradient of an NHWC/HWIO float32
// convolution (every conv of the paper's nets). Built and loaded by src/cpu/onednn.py; see its docstring.
// oneDNN is the CPU kernel library PyTorch uses: on AVX-512 it runs these convolutions 1.2-4x faster than
// XLA:CPU's Eigen kernels (README, Speed). Activations stay NHWC; weights are reordered to the layout the
// primitive wants (they are small). Primitives and their weight reorders are created once per geometry and cached.
//
// Robustness rules, each learned from a failure:
// - Every oneDNN call is inside a try: an exception crossing the FFI boundary aborts the whole process.
// - Scratchpads are user-managed (one per calling thread): the library's default shares one global scratchpad
//   between primitives, which is unsafe when XLA runs two custom calls at once (oneDNN's DNNL_ENABLE_CONCURRENT_EXEC).
// - Strided 1x1 convolutions never reach oneDNN (onednn.py subsamples first): oneDNN 2.6's 1x1 kernel gradient with
//   "reduce to unit stride" writes out of bounds on AVX-512 and returns wrong values on AVX2 (README, Speed).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
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

const dnnl::primitive_attr& UserScratchpad() {
  static dnnl::primitive_attr* attr = [] {
    auto* a = new dnnl::primitive_attr();
    a->set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return *attr;
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
#define CONV_PD(kind, ...) kind::primitive_desc(Engine(), __VA_ARGS__, UserScratchpad())
#define CONV_PD_HINT(kind, hint, ...) kind::primitive_desc(Engine(), __VA_ARGS__, hint, UserScratchpad())
#else
#define CONV_PD(kind, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), UserScratchpad(), Engine())
#define CONV_PD_HINT(kind, hint, ...) kind::primitive_desc(kind::desc(__VA_ARGS__), UserScratchpad(), Engine(), hint)
#endif

constexpr auto convolution_direct = dnnl::algorithm::convolution_direct;

dnnl::convolution_forward::primitive_desc FwdPd(const Geo& g) {
  return CONV_PD(dnnl::convolution_forward, dnnl::prop_kind::forward_training, convolution_direct, g.src(),
                 g.wei(tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r());
}

dnnl::reorder MakeReorder(const memory::desc& from, const memory::desc& to, size_t* scratchpad) {
  dnnl::reorder::primitive_desc pd(Engine(), from, Engine(), to, UserScratchpad());
  *scratchpad = std::max(*scratchpad, pd.scratchpad_desc().get_size());
  return dnnl::reorder(pd);
}

// The primitive of one geometry, the weights layout it wants and, where that is not plain HWIO, the reorder of the
// weights into it (forward, input gradient) or out of it (kernel gradient); the scratchpad bytes they need.
template <class P>
struct Prim {
  P prim;
  memory::desc weights;
  std::unique_ptr<dnnl::reorder> reorder_w;
  size_t scratchpad = 0;
  Prim(const typename P::primitive_desc& pd, const memory::desc& weights, const Geo& g, bool w_is_output)
      : prim(pd), weights(weights), scratchpad(pd.scratchpad_desc().get_size()) {
    if (weights != g.wei()) {
      reorder_w = std::make_unique<dnnl::reorder>(
          w_is_output ? MakeReorder(weights, g.wei(), &scratchpad) : MakeReorder(g.wei(), weights, &scratchpad));
    }
  }
};
template <class P>
using Cache = std::map<decltype(Geo{}.key()), std::unique_ptr<Prim<P>>>;

std::mutex mu;
template <class P>
const Prim<P>& Cached(Cache<P>& cache, const Geo& g, std::unique_ptr<Prim<P>> (*make)(const Geo&)) {
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[g.key()];
  if (!slot) slot = make(g);
  return *slot;
}

std::unique_ptr<Prim<dnnl::convolution_forward>> MakeFwd(const Geo& g) {
  auto pd = FwdPd(g);
  return std::make_unique<Prim<dnnl::convolution_forward>>(pd, pd.weights_desc(), g, false);
}
std::unique_ptr<Prim<dnnl::convolution_backward_data>> MakeBwdData(const Geo& g) {
  auto pd = CONV_PD_HINT(dnnl::convolution_backward_data, FwdPd(g), convolution_direct, g.src(), g.wei(tag::any),
                         g.dst(), g.strides(), g.pad_l(), g.pad_r());
  return std::make_unique<Prim<dnnl::convolution_backward_data>>(pd, pd.weights_desc(), g, false);
}
std::unique_ptr<Prim<dnnl::convolution_backward_weights>> MakeBwdWeights(const Geo& g) {
  if (g.kh == 1 && g.kw == 1 && (g.sh > 1 || g.sw > 1)) {
    throw std::invalid_argument("strided 1x1 kernel gradients are wrong in oneDNN 2.6: subsample the input first");
  }
  auto pd = CONV_PD_HINT(dnnl::convolution_backward_weights, FwdPd(g), convolution_direct, g.src(),
                         g.wei(tag::any), g.dst(), g.strides(), g.pad_l(), g.pad_r());
  return std::make_unique<Prim<dnnl::convolution_backward_weights>>(pd, pd.diff_weights_desc(), g, true);
}

Cache<dnnl::convolution_forward> fwd_cache;
Cache<dnnl::convolution_backward_data> bwd_data_cache;
Cache<dnnl::convolution_backward_weights> bwd_weights_cache;

Geo MakeGeo(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y, int64_t sh,
            int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

// A scratchpad of at least `bytes` for this thread (grown, never shrunk).
memory Scratchpad(size_t bytes) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return memory({{static_cast<memory::dim>(buffer.size())}, memory::data_type::u8, tag::x}, Engine(), buffer.data());
}

// Runs the cached primitive of geometry `g` (made by `make` on first use) with the plain-HWIO weights at `w_ptr`,
// reordering them to (inputs) or from (the kernel gradient's output) the primitive's layout.
template <class P>
ffi::Error Run(Cache<P>& cache, std::unique_ptr<Prim<P>> (*make)(const Geo&), const Geo& g, void* w_ptr, int w_arg,
               bool w_is_output, void* a_ptr, const memory::desc& a_desc, int a_arg, void* b_ptr,
               const memory::desc& b_desc, int b_arg) {
  try {
    const Prim<P>& p = Cached(cache, g, make);
    dnnl::stream s(Engine());
    memory scratchpad = Scratchpad(p.scratchpad);
    memory user_w(g.wei(), Engine(), w_ptr);
    memory prim_w = p.reorder_w ? memory(p.weights, Engine()) : user_w;
    if (p.reorder_w && !w_is_output) {
      p.reorder_w->execute(s, {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, prim_w}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
    p.prim.execute(s, {{a_arg, memory(a_desc, Engine(), a_ptr)},
                       {b_arg, memory(b_desc, Engine(), b_ptr)},
                       {w_arg, prim_w},
                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (p.reorder_w && w_is_output) {
      p.reorder_w->execute(s, {{DNNL_ARG_FROM, prim_w}, {DNNL_ARG_TO, user_w}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(fwd_cache, MakeFwd, g, w.typed_data(), DNNL_ARG_WEIGHTS, false, x.typed_data(), g.src(), DNNL_ARG_SRC,
             y->typed_data(), g.dst(), DNNL_ARG_DST);
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(bwd_data_cache, MakeBwdData, g, w.typed_data(), DNNL_ARG_WEIGHTS, false, dy.typed_data(), g.dst(),
             DNNL_ARG_DIFF_DST, dx->typed_data(), g.src(), DNNL_ARG_DIFF_SRC);
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(bwd_weights_cache, MakeBwdWeights, g, dw->typed_data(), DNNL_ARG_DIFF_WEIGHTS, true, x.typed_data(),
             g.src(), DNNL_ARG_SRC, dy.typed_data(), g.dst(), DNNL_ARG_DIFF_DST);
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
