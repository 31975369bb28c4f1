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

// The page-state array's unit (virtio-balloon pages): what page counts from QEMU's page-state
// commands (sweeps, the working set) are counted in.
inline constexpr uint64_t kPageStatePage = 4096;

// The patched QEMU's answer to x-blimp-balloon-working-set (host/qemu patch 0012, spec section
// 4.5): the guest's page-state array counted by state, in 4 KiB pages, and its discardable pages
// (free, and volatile while unpinned) by how long they have been so in the guest's clock.
struct AgeBucket {
    uint32_t min_age_s = 0;  // holds ages [min, 2 * min) s; the bucket of min 0 holds age 0 only
    uint64_t unused = 0;
    uint64_t volatile_pages = 0;
};
struct WorkingSetReport {
    bool ages = false;  // the guest publishes ages; without them every page is in bucket 0
    uint32_t clock_s = 0;
    uint64_t stable = 0;     // in use (and the array's own pages)
    uint64_t discarded = 0;  // the host took them back; the guest has not touched them since
    uint64_t in_flight = 0;  // being discarded right now
    uint64_t invalid = 0;    // bytes holding no defined state
    std::vector<AgeBucket> buckets;
};

// Memory measured from page ages, in bytes of the guest's current memory.
struct MeasuredMemory {
    uint64_t working_set = 0;  // in use, or made discardable less than idle_after ago
    uint64_t idle = 0;         // guest memory minus the working set
};

// What a WorkingSetReport says of a guest holding `guest_memory` bytes now (balloon actual):
// nothing when the guest publishes no ages. A bucket counts as idle only when all of it is at
// least `idle_after` old, so a threshold between two bucket boundaries counts from the next one
// up: the idle figure is never more than what has been idle that long.
std::optional<MeasuredMemory> measure_idle(const WorkingSetReport& report, uint64_t guest_memory, Millis idle_after);

struct VmObservation {
    std::string name;
    uint64_t memory = 0;      // configured RAM (the balloon's upper bound)
    uint64_t min_memory = 0;  // configured floor
    unsigned shares = 1000;
    std::optional<uint64_t> actual;      // query-balloon: memory the guest has now
    std::optional<uint64_t> target;      // the last target hangar set
    std::optional<GuestStats> stats;     // only fresh stats (the fleet drops stale ones)
    std::optional<GuestStats> previous;  // the sample before, for fault/stall rates
    // Fresh only, and only from a QEMU that answers x-blimp-balloon-working-set.
    std::optional<WorkingSetReport> working_set;
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
// still split it by shares instead of all claiming their full size. A guest that publishes page
// ages (working_set) needs no such guess: its active memory is measured, guest memory minus what
// has been idle `idle_after` or longer (measure_idle), and the hold does not apply to it. What it
// is guaranteed stays what it says it cannot give back (total - available): an idle page may
// still be one the balloon cannot take, such as volatile memory. A guest without stats is never
// inflated: without a working set we cannot promise it will not OOM. Targets move only when the
// change beats the hysteresis, and an inflate is capped at max_step per period so a guest can
// react before the next one.
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
