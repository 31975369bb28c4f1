// The fleet's host-memory story: what MetricsSampler sums per sample and what the summary says
// came back, against a fake /proc.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "metrics.h"

using namespace hangar;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

FleetPoint at(double t, size_t vms, uint64_t rss_mib, uint64_t actual_mib) {
  return FleetPoint{t, vms, rss_mib * kMiB, actual_mib * kMiB};
}

}  // namespace

TEST(HostMemoryStory, PeakEndAndFirstSampleUnderTheBudget) {
  // Two VMs boot (one counted), both run, climb past the budget and come back under it.
  std::vector<FleetPoint> pts = {at(0, 1, 40, 384),  at(1, 2, 300, 768), at(2, 2, 600, 768),
                                 at(3, 2, 520, 500), at(4, 2, 440, 448), at(5, 2, 430, 448),
                                 at(6, 1, 200, 384)};
  auto s = host_memory_story(pts, 448 * kMiB);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->peak.rss, 600 * kMiB);
  EXPECT_EQ(s->peak.time_s, 2);
  EXPECT_EQ(s->end.time_s, 5);  // the last sample with both VMs: the one after ended is not reclaim
  EXPECT_EQ(s->returned, 170 * kMiB);
  ASSERT_TRUE(s->within_budget_s);
  EXPECT_EQ(*s->within_budget_s, 4);
}

TEST(HostMemoryStory, UnderTheBudgetBeforeThePeakDoesNotCount) {
  std::vector<FleetPoint> pts = {at(0, 2, 100, 768), at(1, 2, 700, 768), at(2, 2, 650, 600)};
  auto s = host_memory_story(pts, 448 * kMiB);
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->within_budget_s);
  EXPECT_EQ(s->returned, 50 * kMiB);
}

TEST(HostMemoryStory, NothingSampledIsNoStory) { EXPECT_FALSE(host_memory_story({}, 448 * kMiB)); }

TEST(HostMemoryStory, TheSamplerCountsOnlySamplesWithEveryVmRunning) {
  // A fake /proc with the RSS of two pids: 100 and 200 MiB.
  auto root =
      std::filesystem::temp_directory_path() / ("hangar-metrics-" + std::to_string(getpid()));
  for (int pid : {101, 102}) {
    std::filesystem::create_directories(root / std::to_string(pid));
    std::ofstream(root / std::to_string(pid) / "status")
        << "Name: qemu\nVmRSS:\t" << (pid - 100) * 102400 << " kB\n";
  }
  MetricsSampler m(nullptr, root.string());
  auto vm = [](const char* name, pid_t pid, const char* state) {
    VmSample s;
    s.vm = name;
    s.pid = pid;
    s.state = state;
    s.memory = 384 * kMiB;
    return s;
  };
  std::vector<VmSample> booting = {vm("a", 101, "running"), vm("b", 102, "starting")};
  m.record(0.5, booting);
  std::vector<VmSample> both = {vm("a", 101, "running"), vm("b", 102, "running")};
  both[0].balloon_actual = 200 * kMiB;
  m.record(1.5, both);
  ASSERT_EQ(m.fleet().size(), 1u);
  EXPECT_EQ(m.fleet()[0].vms, 2u);
  EXPECT_EQ(m.fleet()[0].rss, 300 * kMiB);
  EXPECT_EQ(m.fleet()[0].actual, 584 * kMiB);  // b reports no actual: its configured memory
  std::filesystem::remove_all(root);
}

TEST(MetricsCsv, MeasuredMemoryColumnsAreEmptyWithoutAges) {
  auto dir =
      std::filesystem::temp_directory_path() / ("hangar-metrics-csv-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "m.csv").string();
  MetricsSampler m(nullptr, dir.string());  // no pid directories: nothing read from this /proc
  ASSERT_FALSE(m.open_csv(path).is_error());
  VmSample aged, plain;
  aged.vm = "aged";
  aged.state = plain.state = "running";
  aged.balloon_actual = 256 * kMiB;
  aged.measured_working_set = 56 * kMiB;
  aged.measured_idle = 200 * kMiB;
  plain.vm = "plain";
  std::vector<VmSample> samples = {aged, plain};
  m.record(1.0, samples);
  std::ifstream f(path);
  std::string header, a, p;
  std::getline(f, header);
  std::getline(f, a);
  std::getline(f, p);
  EXPECT_NE(header.find(",host,measured_working_set_bytes,measured_idle_bytes"), std::string::npos)
      << header;
  EXPECT_NE(a.find(",local,58720256,209715200"), std::string::npos) << a;
  EXPECT_EQ(p.substr(p.size() - 8), ",local,,") << p;
  EXPECT_NE(StatusView::format_line(aged).find("measured-idle 200 MiB"), std::string::npos);
  EXPECT_EQ(StatusView::format_line(plain).find("measured"), std::string::npos);
  std::filesystem::remove_all(dir);
}
