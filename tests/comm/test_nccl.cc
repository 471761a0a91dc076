// NCCL transport, one rank (self exchange) on device memory through the Communicator: counts
// from the self bootstrap, data from (seed, src, dst, index) compared after a copy back to the
// host. Skipped without a GPU.
#include <cuda_runtime.h>

#include <gtest/gtest.h>

#include "a2a_common.h"
#include "locmoe/comm/communicator.h"

namespace locmoe {
namespace {

TEST(NcclTransport, SelfExchangeOnDeviceMemory) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no GPU";
  SelfBootstrap boot;
  auto cm = uniform_cluster_map(1, 1, 0);
  ASSERT_TRUE(cm.ok());
  CommConfig cfg;
  cfg.transport = "nccl";
  auto comm = Communicator::create(boot, *cm, cfg);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const uint64_t n = 3 << 20;
  std::vector<uint8_t> host(n);
  for (uint64_t i = 0; i < n; ++i) host[i] = testing_a2a::byte_at(1, 0, 0, i);
  void *send = nullptr, *recv = nullptr;
  ASSERT_EQ(cudaMalloc(&send, n), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&recv, n + 16), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(send, host.data(), n, cudaMemcpyHostToDevice), cudaSuccess);
  uint64_t count = n, displ = 0, rdispl = 16;
  Status s = (*comm)->alltoallv(send, &count, &displ, recv, &count, &rdispl, n + 16, MemoryKind::kDevice, nullptr);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> back(n);
  ASSERT_EQ(cudaMemcpy(back.data(), static_cast<char*>(recv) + 16, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(back == host);
  // Host buffers are refused by a device-only transport.
  s = (*comm)->alltoallv(host.data(), &count, &displ, back.data(), &count, &displ, n);
  EXPECT_EQ(s.code(), Code::kUnsupported);
  cudaFree(send);
  cudaFree(recv);
}

}  // namespace
}  // namespace locmoe
