// CPU references of the EP kernels against naive references, and the whole data flow
// (dispatch -> simulated all-to-all -> experts -> combine, forward and backward) over R ranks
// simulated in one process.
#include <map>
#include <set>
#include <string>

#include "kernel_fixture.h"
#include "locmoe/kernels/config.h"

namespace ktest {
namespace {

const Exec kCpu{Device::kCpu, nullptr};

// Every rank's state through the data flow, built with the CPU kernels.
struct Flow {
  Case c;
  std::vector<RoutingPlan> plan;
  std::vector<HostRows> x, send;
  std::vector<std::unique_ptr<HostDispatchLayout>> dl;
  std::vector<Received> rv;
  std::vector<std::unique_ptr<HostExpertLayout>> el;
  std::vector<HostRows> expert_in;

  explicit Flow(const Case& cs) : c(cs) {
    const int32_t R = c.ranks;
    for (int32_t s = 0; s < R; ++s) {
      plan.push_back(make_plan(c, s));
      x.push_back(make_rows(c.tokens, c.hidden, c.dtype, 100 + s + c.seed));
      dl.push_back(std::make_unique<HostDispatchLayout>(c.tokens, c.k, R, c.experts_per_rank));
      EXPECT_TRUE(dispatch_layout(kCpu, plan[s].view(), dl[s]->l).ok());
      send.emplace_back(dl[s]->copies(), c.hidden, c.dtype);
      const Status st = dispatch_pack(kCpu, dl[s]->l, x[s].cview(), send[s].view());
      EXPECT_TRUE(st.ok()) << st.to_string();
    }
    std::vector<HostDispatchLayout*> lp;
    std::vector<HostRows*> sp;
    for (int32_t s = 0; s < R; ++s) {
      lp.push_back(dl[s].get());
      sp.push_back(&send[s]);
    }
    for (int32_t d = 0; d < R; ++d) {
      rv.push_back(exchange_to(d, lp, sp, c.k));
      const int32_t n = rv[d].x.rows;
      el.push_back(std::make_unique<HostExpertLayout>(n, c.k, c.experts_per_rank, c.align));
      const Status st = expert_layout(kCpu, rv[d].slot_expert.data(), n, el[d]->l);
      EXPECT_TRUE(st.ok()) << st.to_string();
      expert_in.emplace_back(el[d]->rows(), c.hidden, c.dtype);
      EXPECT_TRUE(
          expert_unpack(kCpu, el[d]->l, rv[d].x.cview(), nullptr, expert_in[d].view()).ok());
    }
  }

  // Runs expert e (global id) as y = scale(e) * x on the expert-major rows of rank d.
  static float scale(int32_t global_expert) { return 0.5f + 0.25f * (global_expert % 5); }
  HostRows run_experts(int32_t d) const {
    const HostRows& in = expert_in[d];
    HostRows out(in.rows, in.hidden, in.dtype);
    const ExpertLayout& l = el[d]->l;
    for (int32_t e = 0; e < c.experts_per_rank; ++e)
      for (int32_t m = l.expert_offset[e]; m < l.expert_offset[e + 1]; ++m)
        for (int32_t h = 0; h < in.hidden; ++h)
          out.set(m, h, in.get(m, h) * scale(d * c.experts_per_rank + e));
    return out;
  }

  // Forward combine with the given expert outputs: slot_reduce on every destination, exchange
  // back, token_combine on every source.
  std::vector<HostRows> combine(const std::vector<HostRows>& y, bool weighted) const {
    std::vector<HostRows> back;
    for (int32_t d = 0; d < c.ranks; ++d) {
      back.emplace_back(rv[d].x.rows, c.hidden, c.dtype);
      const Status st = slot_reduce(kCpu, el[d]->l, y[d].cview(),
                                    weighted ? rv[d].slot_weight.data() : nullptr, back[d].view());
      EXPECT_TRUE(st.ok()) << st.to_string();
    }
    std::vector<HostRows> out;
    for (int32_t s = 0; s < c.ranks; ++s) {
      HostRows ret = exchange_back(s, dl[s]->copies(), rv, back);
      out.emplace_back(c.tokens, c.hidden, c.dtype);
      const Status st = token_combine(kCpu, dl[s]->l, ret.cview(), out[s].view());
      EXPECT_TRUE(st.ok()) << st.to_string();
    }
    return out;
  }
};

class KernelsCpu : public testing::TestWithParam<Case> {};

TEST_P(KernelsCpu, DispatchLayoutMatchesNaive) {
  const Case c = GetParam();
  for (int32_t s = 0; s < c.ranks; ++s) {
    const RoutingPlan p = make_plan(c, s);
    HostDispatchLayout h(c.tokens, c.k, c.ranks, c.experts_per_rank);
    ASSERT_TRUE(dispatch_layout(kCpu, p.view(), h.l).ok());
    const std::vector<RefCopy> ref = ref_copies(p);
    ASSERT_EQ(h.copies(), static_cast<int32_t>(ref.size()));
    std::vector<int32_t> per_rank(c.ranks, 0);
    for (const RefCopy& rc : ref) ++per_rank[rc.rank];
    int32_t off = 0;
    for (int32_t r = 0; r < c.ranks; ++r) {
      EXPECT_EQ(h.l.send_rank_count[r], per_rank[r]) << "rank " << r;
      EXPECT_EQ(h.l.send_rank_offset[r], off) << "rank " << r;
      off += per_rank[r];
    }
    EXPECT_EQ(h.l.send_rank_offset[c.ranks], off);
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_EQ(h.l.copy_token[i], ref[i].token) << "copy " << i;
      for (int32_t j = 0; j < c.k; ++j) {
        EXPECT_EQ(h.l.copy_slot_expert[i * c.k + j], ref[i].slot_expert[j]) << "copy " << i;
        EXPECT_EQ(h.l.copy_slot_weight[i * c.k + j], ref[i].slot_weight[j]) << "copy " << i;
      }
    }
    // Reverse map: each token's copies, in rank order.
    int32_t at = 0;
    for (int32_t t = 0; t < c.tokens; ++t) {
      EXPECT_EQ(h.l.token_copy_offset[t], at) << "token " << t;
      for (int32_t r = 0; r < c.ranks; ++r)
        for (size_t i = 0; i < ref.size(); ++i)
          if (ref[i].token == t && ref[i].rank == r) {
            EXPECT_EQ(h.l.token_copy[at], static_cast<int32_t>(i)) << "token " << t;
            ++at;
          }
    }
    EXPECT_EQ(h.l.token_copy_offset[c.tokens], at);
  }
}

TEST_P(KernelsCpu, PackAndExpertLayoutMatchNaive) {
  const Case c = GetParam();
  Flow f(c);
  for (int32_t s = 0; s < c.ranks; ++s) {
    const std::vector<RefCopy> ref = ref_copies(f.plan[s]);
    for (size_t i = 0; i < ref.size(); ++i)
      EXPECT_EQ(0, std::memcmp(f.send[s].row(i), f.x[s].row(ref[i].token), f.x[s].row_bytes()))
          << "rank " << s << " copy " << i;
  }
  for (int32_t d = 0; d < c.ranks; ++d) {
    std::vector<int32_t> counts;
    const std::vector<int32_t> rows =
        ref_expert_rows(f.rv[d].slot_expert, c.k, c.experts_per_rank, c.align, &counts);
    const ExpertLayout& l = f.el[d]->l;
    ASSERT_EQ(f.el[d]->rows(), static_cast<int32_t>(rows.size())) << "rank " << d;
    int32_t off = 0;
    for (int32_t e = 0; e < c.experts_per_rank; ++e) {
      EXPECT_EQ(l.expert_count[e], counts[e]);
      EXPECT_EQ(l.expert_offset[e], off);
      EXPECT_EQ(l.expert_offset[e] % c.align, 0);
      off += (counts[e] + c.align - 1) / c.align * c.align;
    }
    for (size_t m = 0; m < rows.size(); ++m) {
      EXPECT_EQ(l.row_src[m], rows[m]) << "rank " << d << " row " << m;
      if (rows[m] >= 0) {
        EXPECT_EQ(l.recv_pos[rows[m]], static_cast<int32_t>(m));
        EXPECT_EQ(0, std::memcmp(f.expert_in[d].row(m), f.rv[d].x.row(rows[m] / c.k),
                                 f.expert_in[d].row_bytes()));
      } else {
        for (int32_t h = 0; h < c.hidden; ++h) EXPECT_EQ(f.expert_in[d].get(m, h), 0.0f);
      }
    }
    for (size_t i = 0; i < f.rv[d].slot_expert.size(); ++i)
      if (f.rv[d].slot_expert[i] < 0) {
        EXPECT_EQ(l.recv_pos[i], -1);
      }
  }
}

// Strided rows (the Dispatcher packs rows with their slot metadata behind them): pack into a
// strided send buffer and unpack from it give the dense results, and the bytes between rows are
// left as they were. Other operations refuse a stride.
TEST_P(KernelsCpu, StridedPackAndUnpackMatchDense) {
  const Case c = GetParam();
  Flow f(c);
  for (int32_t s = 0; s < c.ranks; ++s) {
    const int64_t rb = f.x[s].row_bytes(), stride = rb + 24;
    const int32_t C = f.dl[s]->copies();
    std::vector<unsigned char> buf(static_cast<size_t>(std::max(C, 1) * stride), 0x5A);
    const Status st = dispatch_pack(kCpu, f.dl[s]->l, f.x[s].cview(), Rows{buf.data(), C, c.hidden, c.dtype, stride});
    ASSERT_TRUE(st.ok()) << st.to_string();
    for (int32_t i = 0; i < C; ++i) {
      EXPECT_EQ(0, std::memcmp(buf.data() + i * stride, f.send[s].row(i), rb)) << "rank " << s << " copy " << i;
      for (int64_t b = rb; b < stride; ++b) ASSERT_EQ(buf[i * stride + b], 0x5A) << "gap byte of copy " << i;
    }
    // Unpack rank s's received rows from a strided copy of them.
    const HostRows& rx = f.rv[s].x;
    const int32_t N = rx.rows;
    std::vector<unsigned char> rbuf(static_cast<size_t>(std::max(N, 1) * stride), 0x77);
    for (int32_t i = 0; i < N; ++i) std::memcpy(rbuf.data() + i * stride, rx.row(i), rb);
    HostRows ein(f.el[s]->rows(), c.hidden, c.dtype);
    const Status su = expert_unpack(kCpu, f.el[s]->l, ConstRows{rbuf.data(), N, c.hidden, c.dtype, stride}, nullptr,
                                    ein.view());
    ASSERT_TRUE(su.ok()) << su.to_string();
    EXPECT_EQ(0, std::memcmp(ein.bytes.data(), f.expert_in[s].bytes.data(), ein.bytes.size())) << "rank " << s;
    // A weighted unpack (a reduction) takes dense rows only.
    std::vector<float> w(static_cast<size_t>(std::max(N, 1)) * c.k, 1.0f);
    const Status sw = expert_unpack(kCpu, f.el[s]->l, ConstRows{rbuf.data(), N, c.hidden, c.dtype, stride}, w.data(),
                                    ein.view());
    EXPECT_EQ(sw.code(), Code::kInvalidArgument) << sw.to_string();
    // A stride shorter than a row is refused.
    const Status ss = dispatch_pack(kCpu, f.dl[s]->l, f.x[s].cview(), Rows{buf.data(), C, c.hidden, c.dtype, rb - 1});
    EXPECT_EQ(ss.code(), Code::kInvalidArgument) << ss.to_string();
  }
}

// Every accepted (token, slot) lands exactly once on its expert's rank; dropped slots and tokens
// with no accepted slot are accounted for.
TEST_P(KernelsCpu, TokenConservation) {
  const Case c = GetParam();
  Flow f(c);
  std::map<std::tuple<int32_t, int32_t, int32_t>, int32_t> seen;  // (src, token, slot) -> times
  for (int32_t d = 0; d < c.ranks; ++d)
    for (int32_t i = 0; i < f.rv[d].x.rows; ++i)
      for (int32_t j = 0; j < c.k; ++j) {
        const int32_t pos = f.el[d]->l.recv_pos[i * c.k + j];
        if (pos < 0) continue;
        const int32_t s = f.rv[d].from_rank[i];
        const int32_t t = f.dl[s]->l.copy_token[f.rv[d].from_copy[i]];
        ++seen[{s, t, j}];
        const int32_t e = f.plan[s].expert[t * c.k + j];
        EXPECT_EQ(e / c.experts_per_rank, d);
        EXPECT_GE(pos, f.el[d]->l.expert_offset[e % c.experts_per_rank]);
        EXPECT_LT(pos, f.el[d]->l.expert_offset[e % c.experts_per_rank] +
                           f.el[d]->l.expert_count[e % c.experts_per_rank]);
      }
  for (int32_t s = 0; s < c.ranks; ++s) {
    int64_t dropped_slots = 0, no_copy_tokens = 0, no_copy_layout = 0;
    for (int32_t t = 0; t < c.tokens; ++t) {
      int32_t accepted = 0;
      for (int32_t j = 0; j < c.k; ++j) {
        const bool acc = f.plan[s].expert[t * c.k + j] >= 0;
        accepted += acc;
        dropped_slots += f.plan[s].slot_dropped[t * c.k + j];
        const auto it = seen.find({s, t, j});
        EXPECT_EQ(it == seen.end() ? 0 : it->second, acc ? 1 : 0) << "rank " << s << " token " << t;
      }
      no_copy_tokens += accepted == 0;
      no_copy_layout += f.dl[s]->l.token_copy_offset[t + 1] == f.dl[s]->l.token_copy_offset[t];
    }
    EXPECT_EQ(no_copy_layout, no_copy_tokens);
    if (c.routing == Routing::kAllDropped) {
      EXPECT_EQ(dropped_slots, int64_t{c.tokens} * c.k);
      EXPECT_EQ(f.dl[s]->copies(), 0);
    }
  }
}

// Identity experts and unit weights: each token comes back once per accepted slot, so
// out[t] = m_t * x[t] exactly (m_t = accepted slots; values are small multiples of 1/8).
TEST_P(KernelsCpu, IdentityExpertsUnitWeightsReturnInput) {
  const Case c = GetParam();
  Flow f(c);
  const std::vector<HostRows> out = f.combine(f.expert_in, /*weighted=*/false);
  for (int32_t s = 0; s < c.ranks; ++s)
    for (int32_t t = 0; t < c.tokens; ++t) {
      int32_t m = 0;
      for (int32_t j = 0; j < c.k; ++j) m += f.plan[s].expert[t * c.k + j] >= 0;
      for (int32_t h = 0; h < c.hidden; ++h)
        ASSERT_EQ(out[s].get(t, h), m * f.x[s].get(t, h)) << "rank " << s << " token " << t;
    }
}

// Real weights and distinct experts: out[t] = sum_j w_tj * scale(e_tj) * x[t].
TEST_P(KernelsCpu, WeightedCombineMatchesReference) {
  const Case c = GetParam();
  Flow f(c);
  std::vector<HostRows> y;
  for (int32_t d = 0; d < c.ranks; ++d) y.push_back(f.run_experts(d));
  const std::vector<HostRows> out = f.combine(y, /*weighted=*/true);
  for (int32_t s = 0; s < c.ranks; ++s)
    for (int32_t t = 0; t < c.tokens; ++t) {
      double factor = 0;
      for (int32_t j = 0; j < c.k; ++j) {
        const int32_t e = f.plan[s].expert[t * c.k + j];
        if (e >= 0) factor += double{f.plan[s].weight[t * c.k + j]} * Flow::scale(e);
      }
      for (int32_t h = 0; h < c.hidden; ++h) {
        const float want = static_cast<float>(factor * f.x[s].get(t, h));
        ASSERT_LE(rel_err(out[s].get(t, h), want), reduce_tol(c.dtype))
            << "rank " << s << " token " << t << " h " << h << " got " << out[s].get(t, h)
            << " want " << want;
      }
    }
}

// combine_backward: dispatch grad_out like x, weighted unpack, slot_dot, send dw back, gather.
// With y_e = scale(e) * x: grad_expert_out = w * g and dL/dw_tj = scale(e_tj) * <g_t, x_t>.
TEST_P(KernelsCpu, BackwardMatchesReference) {
  const Case c = GetParam();
  Flow f(c);
  std::vector<HostRows> y;
  for (int32_t d = 0; d < c.ranks; ++d) y.push_back(f.run_experts(d));
  std::vector<HostRows> g, gsend;
  std::vector<HostDispatchLayout*> lp;
  std::vector<HostRows*> sp;
  for (int32_t s = 0; s < c.ranks; ++s) {
    g.push_back(make_rows(c.tokens, c.hidden, c.dtype, 900 + s));
    gsend.emplace_back(f.dl[s]->copies(), c.hidden, c.dtype);
    ASSERT_TRUE(dispatch_pack(kCpu, f.dl[s]->l, g[s].cview(), gsend[s].view()).ok());
  }
  for (int32_t s = 0; s < c.ranks; ++s) {
    lp.push_back(f.dl[s].get());
    sp.push_back(&gsend[s]);
  }
  std::vector<std::vector<float>> dw_back(c.ranks);  // per source: [C*k]
  for (int32_t s = 0; s < c.ranks; ++s) dw_back[s].assign(f.dl[s]->copies() * c.k, -7.0f);
  for (int32_t d = 0; d < c.ranks; ++d) {
    const Received gr = exchange_to(d, lp, sp, c.k);
    const ExpertLayout& l = f.el[d]->l;
    HostRows gexp(f.el[d]->rows(), c.hidden, c.dtype);
    ASSERT_TRUE(expert_unpack(kCpu, l, gr.x.cview(), gr.slot_weight.data(), gexp.view()).ok());
    for (int32_t m = 0; m < f.el[d]->rows(); ++m) {
      const int32_t src = l.row_src[m];
      for (int32_t h = 0; h < c.hidden; ++h) {
        const float want = src < 0 ? 0.0f : gr.slot_weight[src] * gr.x.get(src / c.k, h);
        ASSERT_LE(rel_err(gexp.get(m, h), want), reduce_tol(c.dtype)) << "row " << m;
      }
    }
    std::vector<float> dw(gr.x.rows * c.k, -5.0f);
    ASSERT_TRUE(slot_dot(kCpu, l, gr.x.cview(), y[d].cview(), dw.data()).ok());
    for (int32_t i = 0; i < gr.x.rows; ++i)
      for (int32_t j = 0; j < c.k; ++j)
        dw_back[gr.from_rank[i]][gr.from_copy[i] * c.k + j] = dw[i * c.k + j];
  }
  for (int32_t s = 0; s < c.ranks; ++s) {
    std::vector<float> gw(c.tokens * c.k, -3.0f);
    ASSERT_TRUE(gather_slot_grads(kCpu, f.dl[s]->l, dw_back[s].data(), gw.data()).ok());
    for (int32_t t = 0; t < c.tokens; ++t)
      for (int32_t j = 0; j < c.k; ++j) {
        const int32_t e = f.plan[s].expert[t * c.k + j];
        double dot = 0, mag = 0;
        for (int32_t h = 0; h < c.hidden; ++h) {
          dot += double{g[s].get(t, h)} * f.x[s].get(t, h);
          mag += std::fabs(double{g[s].get(t, h)} * f.x[s].get(t, h));
        }
        const double want = e < 0 ? 0.0 : Flow::scale(e) * dot;
        const double tol = e < 0 ? 0.0 : 1e-5 * Flow::scale(e) * mag;
        ASSERT_NEAR(gw[t * c.k + j], want, tol) << "rank " << s << " token " << t << " slot " << j;
      }
  }
}

// dispatch_backward: slot_reduce unweighted of grad_expert_in, back, token_combine:
// grad_x[t] = sum over accepted slots j of grad_expert_in[row of (t, j)].
TEST_P(KernelsCpu, DispatchBackwardMatchesReference) {
  const Case c = GetParam();
  Flow f(c);
  std::vector<HostRows> gin;
  for (int32_t d = 0; d < c.ranks; ++d)
    gin.push_back(make_rows(f.el[d]->rows(), c.hidden, c.dtype, 50 + d));
  const std::vector<HostRows> gx = f.combine(gin, /*weighted=*/false);
  for (int32_t s = 0; s < c.ranks; ++s) {
    std::vector<double> want(static_cast<size_t>(c.tokens) * c.hidden, 0.0);
    for (int32_t d = 0; d < c.ranks; ++d)
      for (int32_t i = 0; i < f.rv[d].x.rows; ++i) {
        if (f.rv[d].from_rank[i] != s) continue;
        const int32_t t = f.dl[s]->l.copy_token[f.rv[d].from_copy[i]];
        for (int32_t j = 0; j < c.k; ++j) {
          const int32_t pos = f.el[d]->l.recv_pos[i * c.k + j];
          if (pos < 0) continue;
          for (int32_t h = 0; h < c.hidden; ++h) want[t * c.hidden + h] += gin[d].get(pos, h);
        }
      }
    for (int32_t t = 0; t < c.tokens; ++t)
      for (int32_t h = 0; h < c.hidden; ++h)
        ASSERT_LE(rel_err(gx[s].get(t, h), static_cast<float>(want[t * c.hidden + h])),
                  reduce_tol(c.dtype));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, KernelsCpu,
    testing::Values(mk(4, 3, 3, 37, 24, 1, DType::kF32), mk(4, 3, 3, 37, 24, 1, DType::kBF16),
                    mk(1, 4, 2, 50, 16, 1, DType::kF32),                       // single rank
                    mk(3, 2, 6, 29, 7, 1, DType::kBF16, Routing::kRandom, 5),  // k > R, odd H
                    mk(4, 2, 2, 40, 8, 8, DType::kF32),                        // alignment padding
                    mk(2, 4, 4, 33, 12, 4, DType::kBF16, Routing::kRandom, 9),
                    mk(4, 3, 3, 0, 16, 4, DType::kF32),  // zero tokens
                    mk(4, 3, 2, 25, 16, 1, DType::kF32, Routing::kAllToOneExpert),
                    mk(4, 3, 2, 25, 16, 2, DType::kBF16, Routing::kAllDropped),
                    mk(8, 8, 8, 64, 40, 16, DType::kF32, Routing::kRandom, 3)),
    [](const testing::TestParamInfo<Case>& i) { return case_name(i.param); });

// ---- Errors ---------------------------------------------------------------------------------

TEST(KernelsCpuErrors, BadArgumentsAreRejected) {
  Case c = mk(2, 2, 2, 8, 4, 1, DType::kF32);
  const RoutingPlan p = make_plan(c, 0);
  HostDispatchLayout h(c.tokens, c.k, c.ranks, c.experts_per_rank);
  ASSERT_TRUE(dispatch_layout(kCpu, p.view(), h.l).ok());
  HostRows x = make_rows(c.tokens, c.hidden, c.dtype, 1);
  HostRows send(h.copies(), c.hidden + 1, c.dtype);
  EXPECT_EQ(dispatch_pack(kCpu, h.l, x.cview(), send.view()).code(), Code::kInvalidArgument);
  HostRows send_bf(h.copies(), c.hidden, DType::kBF16);
  EXPECT_EQ(dispatch_pack(kCpu, h.l, x.cview(), send_bf.view()).code(), Code::kInvalidArgument);
  if (h.copies() > 0) {
    HostRows small(h.copies() - 1, c.hidden, c.dtype);
    EXPECT_EQ(dispatch_pack(kCpu, h.l, x.cview(), small.view()).code(), Code::kOutOfRange);
  }
  ConstRows bad = x.cview();
  bad.dtype = static_cast<DType>(7);
  HostRows out(c.tokens, c.hidden, c.dtype);
  Rows bad_out = out.view();
  bad_out.dtype = static_cast<DType>(7);
  EXPECT_EQ(token_combine(kCpu, h.l, bad, bad_out).code(), Code::kUnsupported);

  HostDispatchLayout small_layout(c.tokens - 1, c.k, c.ranks, c.experts_per_rank);
  EXPECT_EQ(dispatch_layout(kCpu, p.view(), small_layout.l).code(), Code::kInvalidArgument);
  RoutingPlan bad_plan = p;
  bad_plan.expert[3] = 99;
  EXPECT_EQ(dispatch_layout(kCpu, bad_plan.view(), h.l).code(), Code::kOutOfRange);

  HostExpertLayout e(4, c.k, c.experts_per_rank, 1);
  std::vector<int32_t> se = {0, -1, 1, 0, 5, -1, 1, 1};
  EXPECT_EQ(expert_layout(kCpu, se.data(), 4, e.l).code(), Code::kOutOfRange);
  EXPECT_EQ(expert_layout(kCpu, se.data(), 5, e.l).code(), Code::kInvalidArgument);

  std::vector<uint64_t> tiny(4);
  EXPECT_EQ(carve_dispatch_layout(tiny.data(), 32, 100, 2, 2, 2).status().code(),
            Code::kOutOfRange);
  EXPECT_EQ(dispatch_layout_bytes(-1, 2, 2, 2).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(expert_layout_bytes(4, 2, 2, 0).status().code(), Code::kInvalidArgument);

  if (!kernels_have_cuda()) {
    const Exec gpu{Device::kCuda, nullptr};
    EXPECT_EQ(dispatch_layout(gpu, p.view(), h.l).code(), Code::kUnsupported);
  }
}

TEST(KernelsDtype, Bf16RoundsToNearestEven) {
  // Independent reference: round the binary32 mantissa to 8 bits by hand with long double.
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    uint32_t u = rng();
    if (((u >> 23) & 0xff) == 0xff) continue;  // inf/NaN handled below
    float f;
    std::memcpy(&f, &u, 4);
    const uint32_t lo = u & 0xffff, hi = u >> 16;
    uint32_t want = hi;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) want = hi + 1;
    EXPECT_EQ(bf16::from_float(f).bits, want) << std::hex << u;
    const float back = bf16::from_float(f).to_float();
    if (std::isfinite(back) && std::fabs(f) >= 1.17549435e-38f) {  // normal: relative bound
      EXPECT_LE(std::fabs(back - f), std::fabs(f) / 256.0f);       // half ulp of 8 bits
    }
  }
  EXPECT_TRUE(std::isnan(bf16::from_float(std::nanf("")).to_float()));
  EXPECT_EQ(bf16::from_float(INFINITY).to_float(), INFINITY);
  EXPECT_EQ(bf16::from_float(-INFINITY).to_float(), -INFINITY);
  EXPECT_EQ(bf16::from_float(1.0f).bits, 0x3f80);
  EXPECT_EQ(dtype_size(DType::kBF16), 2);
  EXPECT_EQ(dtype_size(DType::kF32), 4);
}

}  // namespace
}  // namespace ktest

namespace ktest {
namespace {

// ---- fp8 e4m3 ------------------------------------------------------------------------------

// Value of an e4m3 code from its definition (bias 7, 3 mantissa bits, exponent 0 subnormal).
double e4m3_value(int code) {
  const int sign = code & 0x80 ? -1 : 1, e = (code >> 3) & 0xf, m = code & 7;
  if (e == 0) return sign * std::ldexp(m, -9);
  return sign * std::ldexp(1.0 + m / 8.0, e - 7);
}
bool e4m3_nan(int code) { return (code & 0x7f) == 0x7f; }

// Nearest finite code by brute force; ties go to the even code (mantissa bit 0); beyond 448
// saturates to +-448.
int e4m3_nearest(float f) {
  int best = -1;
  double best_d = 0;
  for (int c = 0; c < 256; ++c) {
    if (e4m3_nan(c)) continue;
    if ((c & 0x80) != (std::signbit(f) ? 0x80 : 0)) continue;
    const double d = std::fabs(e4m3_value(c) - double{f});
    if (best < 0 || d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return best;
}

TEST(KernelsFp8, CodecMatchesDefinition) {
  for (int c = 0; c < 256; ++c) {
    if (e4m3_nan(c)) {
      EXPECT_TRUE(std::isnan(fp8e4m3_to_float(static_cast<uint8_t>(c))));
      continue;
    }
    EXPECT_EQ(double{fp8e4m3_to_float(static_cast<uint8_t>(c))}, e4m3_value(c)) << c;
    EXPECT_EQ(fp8e4m3_from_float(static_cast<float>(e4m3_value(c))), c) << c;
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  for (int i = 0; i < 20000; ++i) {
    const float f = std::ldexp(mant(rng), static_cast<int>(rng() % 24) - 14);  // 2^-15 .. 2^9
    EXPECT_EQ(fp8e4m3_from_float(f), e4m3_nearest(f)) << f;
  }
  // Midpoints round to even: 1 + 1/16 lies between codes 0x38 (1.0) and 0x39 (1.125).
  EXPECT_EQ(fp8e4m3_from_float(1.0625f), 0x38);
  EXPECT_EQ(fp8e4m3_from_float(1.1875f), 0x3a);
  EXPECT_EQ(fp8e4m3_from_float(1e6f), 0x7e);
  EXPECT_EQ(fp8e4m3_from_float(-INFINITY), 0xfe);
  EXPECT_TRUE(e4m3_nan(fp8e4m3_from_float(std::nanf(""))));
}

class KernelsFp8Flow : public testing::TestWithParam<Case> {};

// Quantized pack against a naive per-copy quantizer, then dequantized unpack against a naive
// dequantizer; the round trip stays within e4m3's precision of the input.
TEST_P(KernelsFp8Flow, PackAndUnpackMatchNaive) {
  const Case c = GetParam();
  const Exec cpu{Device::kCpu, nullptr};
  const RoutingPlan p = make_plan(c, 0);
  HostDispatchLayout hd(c.tokens, c.k, c.ranks, c.experts_per_rank);
  ASSERT_TRUE(dispatch_layout(cpu, p.view(), hd.l).ok());
  const int32_t C = hd.copies(), H = c.hidden;
  HostRows x = make_rows(c.tokens, H, c.dtype, 31);
  for (int32_t h = 0; h < H && c.tokens > 0; ++h) x.set(0, h, 0.0f);  // an all-zero token
  std::vector<uint8_t> q(static_cast<size_t>(C) * H + 1);
  std::vector<float> scale(C + 1);
  ASSERT_TRUE(dispatch_pack_fp8(cpu, hd.l, x.cview(), Fp8Rows{q.data(), scale.data(), C, H}).ok());
  for (int32_t cc = 0; cc < C; ++cc) {
    const int32_t t = hd.l.copy_token[cc];
    float amax = 0;
    for (int32_t h = 0; h < H; ++h) amax = std::max(amax, std::fabs(x.get(t, h)));
    if (amax == 0) amax = 1;
    ASSERT_EQ(scale[cc], amax / 448.0f) << "copy " << cc;
    const float mul = 448.0f / amax;
    for (int32_t h = 0; h < H; ++h) {
      ASSERT_EQ(q[cc * H + h], e4m3_nearest(x.get(t, h) * mul)) << "copy " << cc << " h " << h;
      const double deq = e4m3_value(q[cc * H + h]) * scale[cc];
      EXPECT_LE(std::fabs(deq - x.get(t, h)), std::max(std::fabs(double{x.get(t, h)}) / 16.0,
                                                       std::ldexp(double{scale[cc]}, -10)) *
                                                  1.0001);
    }
  }
  // Receiver: this rank's copies as the received rows.
  std::vector<int32_t> se(hd.l.copy_slot_expert, hd.l.copy_slot_expert + size_t(C) * c.k);
  std::vector<float> sw(hd.l.copy_slot_weight, hd.l.copy_slot_weight + size_t(C) * c.k);
  HostExpertLayout he(C, c.k, c.experts_per_rank, c.align);
  ASSERT_TRUE(expert_layout(cpu, se.data(), C, he.l).ok());
  for (const float* w :
       {static_cast<const float*>(nullptr), static_cast<const float*>(sw.data())}) {
    HostRows ein(he.rows(), H, c.dtype);
    ASSERT_TRUE(
        expert_unpack_fp8(cpu, he.l, ConstFp8Rows{q.data(), scale.data(), C, H}, w, ein.view())
            .ok());
    std::vector<int32_t> counts;
    const std::vector<int32_t> rows =
        ref_expert_rows(se, c.k, c.experts_per_rank, c.align, &counts);
    for (size_t m = 0; m < rows.size(); ++m)
      for (int32_t h = 0; h < H; ++h) {
        float want = 0;
        if (rows[m] >= 0) {
          const int32_t i = rows[m] / c.k;
          want = static_cast<float>(e4m3_value(q[i * H + h])) * scale[i];
          if (w) want = want * w[rows[m]];
        }
        ASSERT_LE(rel_err(ein.get(m, h), want), c.dtype == DType::kF32 ? 0.0f : 1.0f / 256.0f)
            << "row " << m << " h " << h;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, KernelsFp8Flow,
                         testing::Values(mk(4, 3, 3, 37, 24, 4, DType::kF32),
                                         mk(4, 3, 3, 37, 24, 1, DType::kBF16),
                                         mk(2, 2, 2, 0, 8, 1, DType::kF32)),
                         [](const testing::TestParamInfo<Case>& i) { return case_name(i.param); });

}  // namespace
}  // namespace ktest
