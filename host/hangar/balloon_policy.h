// BalloonPolicy: from what each guest reports to a balloon target per guest.
//
// Pure logic: no QMP, no clocks, no files. The fleet feeds it observations and applies what it
// decides, so policies are unit-tested with made-up guests and swapped without touching the rest.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.h"

namespace hangar {

// What virtio-balloon's stats queue says (QEMU's guest-stats); unreported values are empty.
struct GuestStats {
    std::optional<uint64_t> free_memory;
    std::optional<uint64_t> available_memory;
    std::optional<uint64_t> total_memory;
    std::optional<uint64_t> disk_caches;
    std::optional<uint64_t> major_faults;
    std::optional<uint64_t> minor_faults;
    std::optional<uint64_t> swap_in;
    std::optional<uint64_t> swap_out;
    std::optional<uint64_t> htlb_pgalloc;
    std::optional<uint64_t> htlb_pgfail;
    // Linux 6.10's tags 10-15; QEMU publishes them only with Blimp patch 4 (stock 7.2 drops them).
    std::optional<uint64_t> oom_kills;        // allocations that failed after all reclaim
    std::optional<uint64_t> alloc_stalls;     // allocations that had to reclaim first
    std::optional<uint64_t> direct_reclaims;  // bytes the guest's caches gave back (Linux's unit;
                                              // the policy only asks whether it grew)
    uint64_t last_update = 0;                 // guest time of the last report, 0 = never
};

struct VmObservation {
    std::string name;
    uint64_t memory = 0;      // configured RAM (the balloon's upper bound)
    uint64_t min_memory = 0;  // configured floor
    unsigned shares = 1000;
    std::optional<uint64_t> actual;      // query-balloon: memory the guest has now
    std::optional<uint64_t> target;      // the last target hangar set
    std::optional<GuestStats> stats;     // only fresh stats (the fleet drops stale ones)
    std::optional<GuestStats> previous;  // the sample before, for fault/stall rates
};

struct PolicyDecision {
    std::string name;
    std::optional<uint64_t> target;  // new balloon target (bytes of guest memory), or leave it
    uint64_t desired = 0;            // what the policy wants before hysteresis
    uint64_t protect = 0;            // the floor it will not go below
    std::string reason;
};

class BalloonPolicy {
public:
    virtual ~BalloonPolicy() = default;
    virtual std::string name() const = 0;
    virtual std::vector<PolicyDecision> decide(const std::vector<VmObservation>& vms,
                                               std::optional<uint64_t> budget) = 0;
};

// Never touches a balloon: the baseline of static memory sizes.
class NoPolicy : public BalloonPolicy {
public:
    std::string name() const override { return "none"; }
    std::vector<PolicyDecision> decide(const std::vector<VmObservation>& vms, std::optional<uint64_t>) override;
};

// ESX's idle memory tax, with MoM's caution.
//
// Every guest is first guaranteed what it must keep: its working set (total - available, or
// total - free) plus a floor, its configured min_memory, and more when it shows pressure (major
// faults, allocations failing, or available memory below the floor). What is left of the budget
// is then handed out in chunks, each to the guest with the highest shares-per-page ratio
//     rho = shares / (active + k * idle),   k = 1 / (1 - tax_rate)
// so idle memory "costs" k times active memory and idle guests give up memory first (tax 0 is
// plain proportional share). "Active" is the working set, plus the guest's caches while they
// are being reclaimed (alloc stalls or direct reclaims rising): a cache the guest keeps
// squeezing to make room is in use, though the guest counts it as available; it stays counted
// so for `reclaim_hold` periods after the counters stop rising. This raises what
// the guest may be given, not what it is guaranteed, so caches competing for a tight budget
// still split it by shares instead of all claiming their full size. A guest without stats is never inflated: without a
// working set we cannot promise it will not OOM. Targets move only when the change beats the hysteresis, and an inflate
// is capped at max_step per period so a guest can react before the next one.
class IdleTaxPolicy : public BalloonPolicy {
public:
    explicit IdleTaxPolicy(PolicyConfig config) : c_(config) {}
    std::string name() const override { return "idle-tax"; }
    std::vector<PolicyDecision> decide(const std::vector<VmObservation>& vms, std::optional<uint64_t> budget) override;

    static constexpr uint64_t kChunk = 2ull << 20;

private:
    PolicyConfig c_;
    std::map<std::string, unsigned> cache_active_;  // VM -> periods its caches still count as active
};

std::unique_ptr<BalloonPolicy> make_policy(const PolicyConfig& config);

}  // namespace hangar
