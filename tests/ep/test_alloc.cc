// The Dispatcher's hot path allocates nothing: the calling thread's allocations (operator new and
// malloc from this executable's code, tests/common/alloc_count.h) are counted over training steps
// (dispatch, combine, combine_backward, dispatch_backward) after the first ones, on the comm
// layer's Communicator (4 ranks; run on one node and as 2 emulated nodes, flat and hierarchical),
// with the weight gradients in their own exchange and behind dispatch_backward's rows.
// Two plans with different counts alternate, so a step whose counts differ from the last one's
// (a re-prepare into the handle's plans, new derived schedules) is covered; the first step of
// each may allocate (the plans' and the communicator's storage grow to that shape). The results
// of the counted steps are checked against a plan-only reference, so the test cannot pass by
// moving nothing. Under ASan/TSan (which own malloc) it is skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "alloc_count.h"
#include "ep_test_util.h"
#include "locmoe/ep/dispatcher.h"

namespace locmoe {
namespace {

TEST(DispatcherAllocations, NoneFromTheSecondStepOn) {
  if (!LOCMOE_COUNT_ALLOCS) GTEST_SKIP() << "sanitizers own malloc here";
  {
    test::Counting c;  // the interposers see this binary's allocations (else the test could not fail)
    auto* v = new std::vector<int>(3);
    delete v;
    ASSERT_EQ(c.count(), 2u);
  }
  test::Group g = test::make_group();
  ASSERT_NE(g.comm, nullptr);
  ASSERT_NE(g.comm->transport_name(), "mpi-oracle") << "run with EP_TEST_COMM=communicator";
  const int L = 2, k = 2, H = 16, T = 12;
  for (bool dw_later : {false, true}) {
    SCOPED_TRACE(dw_later ? "weight gradients with dispatch_backward" : "default");
    DispatcherConfig cfg;
    cfg.weight_grads_with_dispatch_backward = dw_later;
    cfg.experts_per_rank = L; cfg.hidden = H; cfg.max_tokens = T; cfg.top_k = k; cfg.align = 4;
    auto d = Dispatcher::create(*g.bootstrap, *g.comm, cfg);
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    auto hh = (*d)->make_handle();
    ASSERT_TRUE(hh.ok());
    Dispatcher& disp = **d;
    DispatchHandle& h = **hh;
    RoutingPlan plans[2];
    for (int i = 0; i < 2; ++i) {
      plans[i] = test::random_plan(g.rank, g.comm->cluster(), L, T, k, 0.3, 17 + i);
      ASSERT_TRUE(finalize_plan(plans[i], g.bootstrap.get()).ok());
    }
    const int64_t cap = disp.max_expert_rows();
    std::vector<float> x(T * H), gout(T * H), ein(cap * H), gy(cap * H), out(T * H), gx(T * H), gw(T * k);
    for (int i = 0; i < T * H; ++i) {
      x[i] = static_cast<float>((i * 7 + g.rank) % 13) - 6.0f;
      gout[i] = static_cast<float>((i * 3 + g.rank) % 5) - 2.0f;
    }
    // Identity experts: y = expert_in, so out[t] = (sum of t's accepted weights) * x[t], d x[t] =
    // (sum of weights) * gout[t] (combine_backward scales grad_out by the weight, dispatch_backward
    // sums), d w[t,j] = <gout[t], x[t]>.
    auto step = [&](const RoutingPlan& p) -> Status {
      LOCMOE_RETURN_IF_ERROR(disp.dispatch(x.data(), p, h, ein.data(), cap));
      LOCMOE_RETURN_IF_ERROR(disp.combine(ein.data(), h, out.data()));
      LOCMOE_RETURN_IF_ERROR(disp.combine_backward(gout.data(), h, ein.data(), gy.data(), dw_later ? nullptr : gw.data()));
      return disp.dispatch_backward(gy.data(), h, gx.data(), nullptr, dw_later ? gw.data() : nullptr);
    };
    ASSERT_TRUE(step(plans[0]).ok());
    ASSERT_TRUE(step(plans[1]).ok());
    uint64_t counted[2] = {0, 0};
    for (int i = 0; i < 8; ++i) {
      const RoutingPlan& p = plans[i % 2];
      Status s;
      {
        test::Counting c;
        s = step(p);
        counted[0] += c.count();
        counted[1] += c.libs();
      }
      ASSERT_TRUE(s.ok()) << s.to_string();
      for (int t = 0; t < T; ++t) {
        double wsum = 0, dot = 0;
        for (int j = 0; j < k; ++j)
          if (p.expert[t * k + j] >= 0) wsum += p.weight[t * k + j];
        for (int c = 0; c < H; ++c) dot += static_cast<double>(gout[t * H + c]) * x[t * H + c];
        for (int c = 0; c < H; ++c) {
          ASSERT_NEAR(out[t * H + c], wsum * x[t * H + c], 1e-4) << "token " << t;
          ASSERT_NEAR(gx[t * H + c], wsum * gout[t * H + c], 1e-4) << "token " << t;
        }
        for (int j = 0; j < k; ++j)
          ASSERT_NEAR(gw[t * k + j], p.expert[t * k + j] >= 0 ? dot : 0.0, 1e-3) << "token " << t << " slot " << j;
      }
    }
    MPI_Allreduce(MPI_IN_PLACE, counted, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (g.rank == 0)
      std::printf("# %s, %s: the transport library's own allocations in those steps: %llu\n",
                  g.comm->transport_name().c_str(), g.comm->algo() == A2AAlgo::kFlat ? "flat" : "hier",
                  static_cast<unsigned long long>(counted[1]));
    EXPECT_EQ(counted[0], 0u) << "allocations in training steps 3..10, all ranks";
  }
}

}  // namespace
}  // namespace locmoe
