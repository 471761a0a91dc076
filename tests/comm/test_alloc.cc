// The hot path allocates nothing: the allocations of the calling thread are counted over
// executes 2..N of a plan (and of its transpose), re-prepares of the same shape into the same
// plan, and alltoallv calls 2..N, for flat and hierarchical, MPI and UCX, 1 and 2 emulated nodes,
// one chunk per message and many, on 4 ranks. The first call may allocate (staging area, request
// slots). Counted: every operator new (vectors, deques, std::function, strings: fmt and Status
// messages) and every malloc/calloc/realloc/aligned allocation called from this executable's own
// code (locmoe is linked in statically). Not counted but reported: the transport libraries' own
// pools (Open MPI's buffers for unexpected messages, UCX's rendezvous requests and mpools), which
// grow on their own schedule. Under ASan/TSan (which own malloc) the test is skipped.
#include <mpi.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include <gtest/gtest.h>

#include "a2a_common.h"
#include "locmoe/comm/bootstrap.h"
#include "locmoe/comm/communicator.h"
#include "locmoe/core/params.h"

#include "alloc_count.h"

namespace locmoe {
namespace {

using namespace testing_a2a;
using test::Counting;

int world(int* size) {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, size);
  return r;
}

TEST(Allocations, NoneFromTheSecondExecuteOn) {
  if (!LOCMOE_COUNT_ALLOCS) GTEST_SKIP() << "sanitizers own malloc here";
  {
    // The interposers see this binary's allocations (else the test could not fail).
    Counting c;
    void* volatile p = std::malloc(24);
    std::free(p);
    auto* v = new std::vector<int>(3);
    delete v;
    ASSERT_EQ(c.count(), 3u);  // malloc, the vector object, its storage
  }
  int n = 0;
  const int me = world(&n);
  auto boot = make_mpi_bootstrap(MPI_COMM_WORLD);
  ASSERT_TRUE(boot.ok());
  for (int nodes : {1, 2}) {
    ASSERT_TRUE(params::set("LOCMOE_HOSTID", "alloc" + std::to_string(me * nodes / n)).ok());
    auto host = local_host_id();
    auto cm = exchange_cluster_map(**boot, RankDescriptor{*host, "", ""});
    params::reset();
    ASSERT_TRUE(cm.ok());
    for (const char* transport : {"mpi", "ucx"}) {
      if (!transport_available(transport)) continue;
      for (A2AAlgo algo : {A2AAlgo::kFlat, A2AAlgo::kHierarchical}) {
        for (uint64_t chunk : {uint64_t{0}, uint64_t{8192}}) {
          const std::string label =
              fmt::format("{} nodes, {}, {}, chunk {}", nodes, transport, algo == A2AAlgo::kFlat ? "flat" : "hier", chunk);
          SCOPED_TRACE(label);
          CommConfig cfg;
          cfg.transport = transport;
          cfg.algo = algo;
          cfg.chunk_bytes = chunk;
          cfg.timeout_s = 60;
          auto comm = Communicator::create(**boot, *cm, cfg);
          ASSERT_TRUE(comm.ok()) << comm.status().to_string();
          Communicator& c = **comm;
          std::vector<uint64_t> sc(n), sd(n), rc(n), rd(n);
          uint64_t so = 0, ro = 0;
          for (int r = 0; r < n; ++r) {
            sd[r] = so, so += sc[r] = 1000 + count_of(Pattern::kRandom, 3, n, me, r) * 7;
            rd[r] = ro, ro += rc[r] = 1000 + count_of(Pattern::kRandom, 3, n, r, me) * 7;
          }
          std::vector<uint8_t> send(so, uint8_t(me)), recv(ro);
          ExchangeSpec spec{sc.data(), sd.data(), rc.data(), rd.data(), recv.size(), MemoryKind::kHost};
          ExchangePlan plan, back;
          ASSERT_TRUE(c.prepare(spec, plan).ok());
          ASSERT_TRUE(c.transpose(plan, back).ok());
          ASSERT_TRUE(c.execute(plan, send.data(), recv.data()).ok());  // first: may allocate
          ASSERT_TRUE(c.execute(back, recv.data(), send.data()).ok());
          ASSERT_TRUE(c.alltoallv(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), recv.size())
                          .ok());
          uint64_t counted[4] = {0, 0, 0, 0};
          for (int i = 0; i < 10; ++i) {
            Status s[3];
            {
              Counting k;
              s[0] = c.execute(plan, send.data(), recv.data());
              s[1] = c.execute(back, recv.data(), send.data());
              counted[0] += k.count();
              counted[3] += k.libs();
            }
            {
              Counting k;
              s[2] = c.prepare(spec, plan);
              counted[1] += k.count();
            }
            ASSERT_TRUE(s[0].ok() && s[1].ok() && s[2].ok()) << s[0].to_string() << s[1].to_string() << s[2].to_string();
            {
              Counting k;
              Status a = c.alltoallv(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), recv.size());
              counted[2] += k.count();
              ASSERT_TRUE(a.ok()) << a.to_string();
            }
          }
          MPI_Allreduce(MPI_IN_PLACE, counted, 4, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
          if (me == 0)
            std::printf("# %s: the transport library's own allocations in those executes: %llu\n", label.c_str(),
                        static_cast<unsigned long long>(counted[3]));
          EXPECT_EQ(counted[0], 0u) << "allocations in executes 2..11, all ranks";
          EXPECT_EQ(counted[1], 0u) << "allocations in prepares into the same plan";
          EXPECT_EQ(counted[2], 0u) << "allocations in alltoallv calls 2..11";
          // The data is still right after all that (a round trip returns every byte).
          for (int r = 0; r < n; ++r)
            for (uint64_t i = 0; i < rc[r]; ++i) ASSERT_EQ(recv[rd[r] + i], uint8_t(r)) << "from rank " << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace locmoe
