// When page-state sweeps run and how much they ask for (reclaim_pressure.h), and the /proc
// readers against a fake /proc.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "reclaim_pressure.h"

using namespace hangar;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

HostMemory roomy() { return HostMemory{24576 * kMiB, 20000 * kMiB, 0.0}; }

}  // namespace

TEST(ReclaimNeed, NoPressureAsksForNothing) {
  auto n = reclaim_need(1024 * kMiB, 900 * kMiB, roomy(), 512 * kMiB);
  EXPECT_EQ(n.bytes, 0u);
  EXPECT_TRUE(n.reason.empty());
  EXPECT_EQ(reclaim_need(std::nullopt, 90000 * kMiB, roomy(), 512 * kMiB).bytes, 0u);  // no budget
  EXPECT_EQ(reclaim_need(std::nullopt, 0, HostMemory{}, 512 * kMiB).bytes, 0u);  // nothing known
}

TEST(ReclaimNeed, TheBudgetDeficitExactly) {
  auto n = reclaim_need(448 * kMiB, 530 * kMiB, roomy(), 512 * kMiB);
  EXPECT_EQ(n.bytes, 82 * kMiB);
  EXPECT_EQ(n.reason.rfind("budget:", 0), 0u) << n.reason;
}

TEST(ReclaimNeed, TheHostReserveAndTheLargerNeedWins) {
  HostMemory low{4096 * kMiB, 300 * kMiB, 0.0};
  auto n = reclaim_need(448 * kMiB, 460 * kMiB, low, 512 * kMiB);
  EXPECT_EQ(n.bytes, 212 * kMiB);  // the reserve's 212 MiB beat the budget's 12
  EXPECT_EQ(n.reason.rfind("reserve:", 0), 0u) << n.reason;
}

TEST(ReclaimNeed, PsiStallsAskForAChunk) {
  HostMemory stalling = roomy();
  stalling.psi_some_avg10 = 25.5;
  auto n = reclaim_need(std::nullopt, 0, stalling, 512 * kMiB);
  EXPECT_EQ(n.bytes, kPsiChunk);
  EXPECT_EQ(n.reason.rfind("psi:", 0), 0u) << n.reason;
  stalling.psi_some_avg10 = kPsiSomeAvg10 - 0.5;
  EXPECT_EQ(reclaim_need(std::nullopt, 0, stalling, 512 * kMiB).bytes, 0u);
}

TEST(ReadHostMemory, MeminfoAndPressureFiles) {
  auto root =
      std::filesystem::temp_directory_path() / ("hangar-pressure-" + std::to_string(getpid()));
  std::filesystem::create_directories(root / "pressure");
  std::ofstream(root / "meminfo")
      << "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   1024 kB\n";
  std::ofstream(root / "pressure" / "memory") << "some avg10=12.50 avg60=3.00 avg300=1.00 total=5\n"
                                                 "full avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";
  HostMemory m = read_host_memory(root.string());
  EXPECT_EQ(m.mem_total, 24576000ull * 1024);
  EXPECT_EQ(m.mem_available, 1024ull * 1024);
  ASSERT_TRUE(m.psi_some_avg10);
  EXPECT_DOUBLE_EQ(*m.psi_some_avg10, 12.5);
  std::filesystem::remove_all(root);
  HostMemory none = read_host_memory(root.string());  // gone: nothing known, no crash
  EXPECT_FALSE(none.mem_available || none.psi_some_avg10);
}
