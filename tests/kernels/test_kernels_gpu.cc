// CUDA kernels against the CPU references, operation by operation, on the same inputs.
// Data movement and layouts must be bit-exact; the reductions use the same order and rounding as
// the CPU (no FMA contraction) and are checked bit-exact too, except slot_dot (a warp tree sum,
// within 1e-5 of sum |g*y|). Skips when no CUDA device is visible.
#include <cuda_runtime_api.h>

#include "kernel_fixture.h"
#include "locmoe/kernels/config.h"

namespace ktest {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(expr)

// Owning device allocation.
struct Dev {
  void* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t bytes) : n(bytes) {
    if (cudaMalloc(&p, bytes == 0 ? 16 : bytes) != cudaSuccess) p = nullptr;
  }
  Dev(const void* host, size_t bytes) : Dev(bytes) {
    if (p && bytes) cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
  template <typename T>
  std::vector<T> get(size_t count, size_t offset_bytes = 0) const {
    std::vector<T> v(count);
    if (count)
      cudaMemcpy(v.data(), static_cast<char*>(p) + offset_bytes, count * sizeof(T),
                 cudaMemcpyDeviceToHost);
    return v;
  }
};

const Exec kCpu{Device::kCpu, nullptr};

class KernelsGpu : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
    CUDA_OK(cudaStreamCreate(&stream_));
    gpu_ = Exec{Device::kCuda, stream_};
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  void sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  cudaStream_t stream_ = nullptr;
  Exec gpu_;
};

template <typename T>
void expect_same(const T* cpu, const std::vector<T>& gpu, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(0, std::memcmp(&cpu[i], &gpu[i], sizeof(T))) << what << "[" << i << "]";
}

TEST_P(KernelsGpu, EveryOpMatchesCpu) {
  const Case c = GetParam();
  const int32_t k = c.k, L = c.experts_per_rank, H = c.hidden;
  const size_t esz = dtype_size(c.dtype);
  for (int32_t s = 0; s < c.ranks; ++s) {
    RoutingPlan plan = make_plan(c, s);
    HostDispatchLayout hd(c.tokens, k, c.ranks, L);
    ASSERT_TRUE(dispatch_layout(kCpu, plan.view(), hd.l).ok());
    const int32_t C = hd.copies();

    // Device plan and layout.
    Dev d_nodes(plan.node_of_rank.data(), plan.node_of_rank.size() * 4);
    Dev d_expert(plan.expert.data(), plan.expert.size() * 4);
    Dev d_weight(plan.weight.data(), plan.weight.size() * 4);
    PlanView pv = plan.view();
    pv.node_of_rank = d_nodes.as<int32_t>();
    pv.expert = d_expert.as<int32_t>();
    pv.weight = d_weight.as<float>();
    pv.slot_dropped = nullptr;
    const int64_t lbytes = *dispatch_layout_bytes(c.tokens, k, c.ranks, L);
    Dev d_lay(lbytes);
    auto dl = carve_dispatch_layout(d_lay.p, lbytes, c.tokens, k, c.ranks, L);
    ASSERT_TRUE(dl.ok());
    // Poison the device layout so unwritten entries show.
    CUDA_OK(cudaMemset(d_lay.p, 0x5c, lbytes));
    ASSERT_TRUE(dispatch_layout(gpu_, pv, *dl).ok());
    sync();
    auto dev_arr = [&](const void* dev_ptr, size_t count, auto tag) {
      using T = decltype(tag);
      return d_lay.get<T>(count, static_cast<const char*>(dev_ptr) - static_cast<char*>(d_lay.p));
    };
    expect_same(hd.l.send_rank_count, dev_arr(dl->send_rank_count, c.ranks, int32_t{}), c.ranks,
                "send_rank_count");
    expect_same(hd.l.send_rank_offset, dev_arr(dl->send_rank_offset, c.ranks + 1, int32_t{}),
                c.ranks + 1, "send_rank_offset");
    expect_same(hd.l.copy_token, dev_arr(dl->copy_token, C, int32_t{}), C, "copy_token");
    expect_same(hd.l.copy_slot_expert, dev_arr(dl->copy_slot_expert, size_t(C) * k, int32_t{}),
                size_t(C) * k, "copy_slot_expert");
    expect_same(hd.l.copy_slot_weight, dev_arr(dl->copy_slot_weight, size_t(C) * k, float{}),
                size_t(C) * k, "copy_slot_weight");
    expect_same(hd.l.token_copy_offset, dev_arr(dl->token_copy_offset, c.tokens + 1, int32_t{}),
                c.tokens + 1, "token_copy_offset");
    expect_same(hd.l.token_copy, dev_arr(dl->token_copy, C, int32_t{}), C, "token_copy");
    if (HasFatalFailure()) return;

    // Pack.
    HostRows x = make_rows(c.tokens, H, c.dtype, 11 + s);
    HostRows send(C, H, c.dtype);
    ASSERT_TRUE(dispatch_pack(kCpu, hd.l, x.cview(), send.view()).ok());
    Dev d_x(x.bytes.data(), x.bytes.size());
    Dev d_send(size_t(C) * H * esz + 16);
    ASSERT_TRUE(dispatch_pack(gpu_, *dl, ConstRows{d_x.p, c.tokens, H, c.dtype},
                              Rows{d_send.p, C, H, c.dtype})
                    .ok());
    sync();
    expect_same(send.bytes.data(), d_send.get<uint8_t>(size_t(C) * H * esz), size_t(C) * H * esz,
                "send");

    // Receiver side on this rank's own copies (rows as if received), with padding.
    const int32_t N = C;
    std::vector<int32_t> se(hd.l.copy_slot_expert, hd.l.copy_slot_expert + size_t(N) * k);
    std::vector<float> sw(hd.l.copy_slot_weight, hd.l.copy_slot_weight + size_t(N) * k);
    HostExpertLayout he(N, k, L, c.align);
    ASSERT_TRUE(expert_layout(kCpu, se.data(), N, he.l).ok());
    const int32_t M = he.rows();
    Dev d_se(se.data(), se.size() * 4), d_sw(sw.data(), sw.size() * 4);
    const int64_t ebytes = *expert_layout_bytes(N, k, L, c.align);
    Dev d_elay(ebytes);
    CUDA_OK(cudaMemset(d_elay.p, 0x5c, ebytes));
    auto el = carve_expert_layout(d_elay.p, ebytes, N, k, L, c.align);
    ASSERT_TRUE(el.ok());
    ASSERT_TRUE(expert_layout(gpu_, d_se.as<int32_t>(), N, *el).ok());
    sync();
    auto edev = [&](const void* dev_ptr, size_t count) {
      return d_elay.get<int32_t>(count,
                                 static_cast<const char*>(dev_ptr) - static_cast<char*>(d_elay.p));
    };
    expect_same(he.l.expert_count, edev(el->expert_count, L), L, "expert_count");
    expect_same(he.l.expert_offset, edev(el->expert_offset, L + 1), L + 1, "expert_offset");
    expect_same(he.l.recv_pos, edev(el->recv_pos, size_t(N) * k), size_t(N) * k, "recv_pos");
    expect_same(he.l.row_src, edev(el->row_src, M), M, "row_src");
    if (HasFatalFailure()) return;

    const size_t mbytes = size_t(M) * H * esz;
    for (const float* w :
         {static_cast<const float*>(nullptr), static_cast<const float*>(sw.data())}) {
      HostRows ein(M, H, c.dtype);
      ASSERT_TRUE(expert_unpack(kCpu, he.l, send.cview(), w, ein.view()).ok());
      Dev d_ein(mbytes + 16);
      ASSERT_TRUE(expert_unpack(gpu_, *el, ConstRows{d_send.p, N, H, c.dtype},
                                w ? d_sw.as<float>() : nullptr, Rows{d_ein.p, M, H, c.dtype})
                      .ok());
      sync();
      expect_same(ein.bytes.data(), d_ein.get<uint8_t>(mbytes), mbytes,
                  w ? "expert_in weighted" : "expert_in");
    }

    // Expert outputs: arbitrary rows; reductions back.
    HostRows y = make_rows(M, H, c.dtype, 77 + s);
    Dev d_y(y.bytes.data(), y.bytes.size());
    for (const float* w :
         {static_cast<const float*>(nullptr), static_cast<const float*>(sw.data())}) {
      HostRows back(N, H, c.dtype);
      ASSERT_TRUE(slot_reduce(kCpu, he.l, y.cview(), w, back.view()).ok());
      Dev d_back(size_t(N) * H * esz + 16);
      ASSERT_TRUE(slot_reduce(gpu_, *el, ConstRows{d_y.p, M, H, c.dtype},
                              w ? d_sw.as<float>() : nullptr, Rows{d_back.p, N, H, c.dtype})
                      .ok());
      sync();
      expect_same(back.bytes.data(), d_back.get<uint8_t>(size_t(N) * H * esz), size_t(N) * H * esz,
                  "slot_reduce");

      HostRows out(c.tokens, H, c.dtype);
      ASSERT_TRUE(token_combine(kCpu, hd.l, back.cview(), out.view()).ok());
      Dev d_out(size_t(c.tokens) * H * esz + 16);
      ASSERT_TRUE(token_combine(gpu_, *dl, ConstRows{d_back.p, N, H, c.dtype},
                                Rows{d_out.p, c.tokens, H, c.dtype})
                      .ok());
      sync();
      expect_same(out.bytes.data(), d_out.get<uint8_t>(size_t(c.tokens) * H * esz),
                  size_t(c.tokens) * H * esz, "token_combine");
    }

    // fp8 dispatch: quantized pack and dequantized unpack (bit-exact: same encoder, exact max).
    {
      std::vector<uint8_t> q(size_t(C) * H + 1);
      std::vector<float> qs(C + 1);
      ASSERT_TRUE(
          dispatch_pack_fp8(kCpu, hd.l, x.cview(), Fp8Rows{q.data(), qs.data(), C, H}).ok());
      Dev d_q(q.size()), d_qs(qs.size() * 4);
      ASSERT_TRUE(dispatch_pack_fp8(gpu_, *dl, ConstRows{d_x.p, c.tokens, H, c.dtype},
                                    Fp8Rows{d_q.as<uint8_t>(), d_qs.as<float>(), C, H})
                      .ok());
      sync();
      expect_same(q.data(), d_q.get<uint8_t>(size_t(C) * H), size_t(C) * H, "fp8 codes");
      expect_same(qs.data(), d_qs.get<float>(C), C, "fp8 scales");
      HostRows ein(M, H, c.dtype);
      ASSERT_TRUE(expert_unpack_fp8(kCpu, he.l, ConstFp8Rows{q.data(), qs.data(), N, H}, sw.data(),
                                    ein.view())
                      .ok());
      Dev d_ein(mbytes + 16);
      ASSERT_TRUE(expert_unpack_fp8(gpu_, *el,
                                    ConstFp8Rows{d_q.as<uint8_t>(), d_qs.as<float>(), N, H},
                                    d_sw.as<float>(), Rows{d_ein.p, M, H, c.dtype})
                      .ok());
      sync();
      expect_same(ein.bytes.data(), d_ein.get<uint8_t>(mbytes), mbytes, "expert_in fp8");
    }

    // slot_dot and the slot-gradient gather.
    HostRows g = make_rows(N, H, c.dtype, 5 + s);
    Dev d_g(g.bytes.data(), g.bytes.size());
    std::vector<float> dw(size_t(N) * k);
    ASSERT_TRUE(slot_dot(kCpu, he.l, g.cview(), y.cview(), dw.data()).ok());
    Dev d_dw(dw.size() * 4 + 16);
    ASSERT_TRUE(slot_dot(gpu_, *el, ConstRows{d_g.p, N, H, c.dtype},
                         ConstRows{d_y.p, M, H, c.dtype}, d_dw.as<float>())
                    .ok());
    sync();
    const std::vector<float> gdw = d_dw.get<float>(dw.size());
    for (size_t i = 0; i < dw.size(); ++i) {
      double mag = 0;
      const int32_t pos = he.l.recv_pos[i];
      if (pos >= 0)
        for (int32_t h = 0; h < H; ++h) mag += std::fabs(double{g.get(i / k, h)} * y.get(pos, h));
      ASSERT_NEAR(gdw[i], dw[i], 1e-5 * mag) << "dw[" << i << "]";
    }
    std::vector<float> gw(size_t(c.tokens) * k);
    ASSERT_TRUE(gather_slot_grads(kCpu, hd.l, dw.data(), gw.data()).ok());
    Dev d_dwc(dw.data(), dw.size() * 4), d_gw(gw.size() * 4 + 16);
    ASSERT_TRUE(gather_slot_grads(gpu_, *dl, d_dwc.as<float>(), d_gw.as<float>()).ok());
    sync();
    expect_same(gw.data(), d_gw.get<float>(gw.size()), gw.size(), "grad_weight");
  }
}

// Misaligned rows (pointer offset by 4 bytes): the kernels fall back from 16-byte vectors and
// must still match.
TEST_P(KernelsGpu, MisalignedRowsMatchCpu) {
  const Case c = GetParam();
  if (c.dtype != DType::kF32) GTEST_SKIP() << "one dtype is enough";
  RoutingPlan plan = make_plan(c, 0);
  HostDispatchLayout hd(c.tokens, c.k, c.ranks, c.experts_per_rank);
  ASSERT_TRUE(dispatch_layout(kCpu, plan.view(), hd.l).ok());
  const int32_t C = hd.copies();
  const int32_t H = c.hidden;
  HostRows x = make_rows(c.tokens, H, c.dtype, 3);
  HostRows send(C, H, c.dtype);
  ASSERT_TRUE(dispatch_pack(kCpu, hd.l, x.cview(), send.view()).ok());
  const int64_t lbytes = *dispatch_layout_bytes(c.tokens, c.k, c.ranks, c.experts_per_rank);
  Dev d_lay(lbytes);
  CUDA_OK(cudaMemcpy(d_lay.p, hd.buf.data(), lbytes, cudaMemcpyHostToDevice));
  auto dl = carve_dispatch_layout(d_lay.p, lbytes, c.tokens, c.k, c.ranks, c.experts_per_rank);
  ASSERT_TRUE(dl.ok());
  dl->num_tokens = hd.l.num_tokens;
  Dev d_x(x.bytes.size() + 16), d_send(size_t(C) * H * 4 + 32);
  CUDA_OK(cudaMemcpy(d_x.as<char>() + 4, x.bytes.data(), x.bytes.size(), cudaMemcpyHostToDevice));
  ASSERT_TRUE(dispatch_pack(gpu_, *dl, ConstRows{d_x.as<char>() + 4, c.tokens, H, c.dtype},
                            Rows{d_send.as<char>() + 4, C, H, c.dtype})
                  .ok());
  sync();
  expect_same(send.bytes.data(), d_send.get<uint8_t>(size_t(C) * H * 4, 4), size_t(C) * H * 4,
              "send");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KernelsGpu,
    testing::Values(mk(4, 3, 3, 37, 24, 1, DType::kF32), mk(4, 3, 3, 37, 24, 1, DType::kBF16),
                    mk(8, 4, 8, 1000, 64, 16, DType::kBF16),  // several sort chunks, vectors
                    mk(8, 4, 8, 1000, 64, 16, DType::kF32),
                    mk(2, 16, 6, 700, 7, 4, DType::kBF16),  // odd H: element-wise path
                    mk(1, 8, 2, 300, 32, 1, DType::kF32),   // single rank
                    mk(4, 3, 3, 0, 16, 4, DType::kF32),     // zero tokens
                    mk(4, 3, 2, 513, 16, 8, DType::kF32, Routing::kAllToOneExpert),
                    mk(4, 3, 2, 300, 16, 2, DType::kBF16, Routing::kAllDropped)),
    [](const testing::TestParamInfo<Case>& i) { return case_name(i.param); });

}  // namespace
}  // namespace ktest
