// The UCX transport's NET_DEVICES from a rank's rail NIC (comm/transport.h: ucx_net_device):
// InfiniBand "name:1", Ethernet the interface, nothing when the user set UCX_NET_DEVICES or the
// NIC is not a device of this machine. The loopback interface "lo" exists on every Linux host.
#include <gtest/gtest.h>

#include <cstdlib>

#include "locmoe/comm/transport.h"

namespace locmoe {
namespace {

RankDescriptor with_nic(const char* name, const char* kind) {
  RankDescriptor d{"h", "", name};
  d.nic_name = name;
  d.nic_kind = kind;
  return d;
}

TEST(UcxNetDevice, FromTheRankNic) {
  unsetenv("UCX_NET_DEVICES");
  if (!transport_available("ucx")) {
    EXPECT_EQ(ucx_net_device(with_nic("lo", "eth")), "");
    GTEST_SKIP() << "no UCX in this build";
  }
  EXPECT_EQ(ucx_net_device(with_nic("lo", "eth")), "lo");
  EXPECT_EQ(ucx_net_device(with_nic("lo", "unknown")), "lo");
  EXPECT_EQ(ucx_net_device(with_nic("no-such-nic0", "eth")), "");
  EXPECT_EQ(ucx_net_device(with_nic("mlx5_77", "ib")), "") << "an IB device this machine lacks";
  EXPECT_EQ(ucx_net_device(with_nic("", "")), "");
  EXPECT_EQ(ucx_net_device(with_nic("../lo", "eth")), "") << "not a device name";
  setenv("UCX_NET_DEVICES", "all", 1);
  EXPECT_EQ(ucx_net_device(with_nic("lo", "eth")), "") << "the user's UCX_NET_DEVICES wins";
  unsetenv("UCX_NET_DEVICES");
}

}  // namespace
}  // namespace locmoe
