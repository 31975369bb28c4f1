// ReclaimPressure: how much memory the host wants back from page-state sweeps, and why.
//
// Collaborative page states let the host take a guest's unused and volatile pages without a
// round trip, so the host should take them only when it needs them: a volatile cache discarded
// on an idle host is work thrown away. Pressure is any of
//   budget   the fleet's RSS summed is above the budget (what the operator allowed)
//   reserve  MemAvailable is below host_reserve (the host itself runs short)
//   psi      /proc/pressure/memory "some avg10" at or above kPsiSomeAvg10: tasks are stalling
//            on memory although the numbers above look fine; asks for kPsiChunk
// and the need is the largest of them. No pressure, need 0: no sweep at all.
//
// Pure logic plus two small /proc readers (a root directory for tests), unit-tested.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace hangar {

struct HostMemory {
    std::optional<uint64_t> mem_total;      // /proc/meminfo, bytes
    std::optional<uint64_t> mem_available;  // /proc/meminfo, bytes
    std::optional<double> psi_some_avg10;   // /proc/pressure/memory, percent
};

// Reads /proc/meminfo and /proc/pressure/memory under proc_root; missing values stay empty.
HostMemory read_host_memory(const std::string& proc_root = "/proc");

struct ReclaimNeed {
    uint64_t bytes = 0;  // 0: no pressure
    std::string reason;  // "budget: rss 530 MiB > 448 MiB", ... ; empty without pressure
};

constexpr double kPsiSomeAvg10 = 10.0;
constexpr uint64_t kPsiChunk = 64ull << 20;

ReclaimNeed reclaim_need(std::optional<uint64_t> budget, uint64_t fleet_rss, const HostMemory& host,
                         uint64_t host_reserve);

}  // namespace hangar
