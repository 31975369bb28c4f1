#include "balloon_policy.h"

#include <algorithm>
#include <queue>

namespace hangar {

namespace {

uint64_t round_mib(uint64_t bytes) { return bytes & ~((1ull << 20) - 1); }

bool grew(const std::optional<uint64_t>& now, const std::optional<uint64_t>& before) {
    return now && before && *now > *before;
}

uint64_t add_sat(uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

}  // namespace

std::optional<MeasuredMemory> measure_idle(const WorkingSetReport& report, uint64_t guest_memory, Millis idle_after) {
    if (!report.ages) return std::nullopt;
    // Counted from the side of use, so that the balloon's pages (discarded, or free in the array
    // until QEMU discards them) can never be subtracted from a guest memory that already excludes
    // them. Pages the host took back or is taking back are outside it: the guest has not touched
    // them since (a touch makes a page STABLE first). Bytes of no defined state count as in use.
    uint64_t pages = add_sat(report.stable, report.invalid);
    for (const auto& b : report.buckets)
        if (std::chrono::seconds(b.min_age_s) < idle_after) pages = add_sat(pages, add_sat(b.unused, b.volatile_pages));
    const uint64_t bytes = pages > UINT64_MAX / kPageStatePage ? UINT64_MAX : pages * kPageStatePage;
    const uint64_t ws = std::min(bytes, guest_memory);
    return MeasuredMemory{ws, guest_memory - ws};
}

std::vector<PolicyDecision> NoPolicy::decide(const std::vector<VmObservation>& vms, std::optional<uint64_t>) {
    std::vector<PolicyDecision> out;
    for (const auto& vm : vms) out.push_back({vm.name, std::nullopt, vm.memory, vm.memory, "static"});
    return out;
}

std::vector<PolicyDecision> IdleTaxPolicy::decide(const std::vector<VmObservation>& vms,
                                                  std::optional<uint64_t> budget) {
    struct Work {
        uint64_t current = 0;
        uint64_t protect = 0;
        uint64_t active = 0;
        uint64_t alloc = 0;
        bool managed = false;  // has stats: may be inflated
        bool pressure = false;
        std::string reason;
    };
    std::vector<Work> w(vms.size());
    const double k = 1.0 / (1.0 - c_.tax_rate);

    for (size_t i = 0; i < vms.size(); ++i) {
        const auto& vm = vms[i];
        Work& x = w[i];
        x.current = vm.target ? *vm.target : vm.actual ? *vm.actual : vm.memory;
        x.current = std::min(x.current, vm.memory);
        const uint64_t floor = std::max(vm.min_memory, c_.floor);
        std::optional<uint64_t> avail;
        if (vm.stats) avail = vm.stats->available_memory ? vm.stats->available_memory : vm.stats->free_memory;
        if (!vm.stats || !avail) {
            x.protect = x.alloc = x.active = vm.memory;
            x.reason = "no guest stats: kept at full memory";
            continue;
        }
        const GuestStats& s = *vm.stats;
        const uint64_t total = s.total_memory ? *s.total_memory : x.current;
        const uint64_t used = total > *avail ? total - *avail : 0;
        x.managed = true;
        x.active = std::min(used, vm.memory);
        x.protect = std::min(vm.memory, std::max(used + c_.floor, floor));
        x.reason = "working set " + format_size(used);
        std::optional<MeasuredMemory> measured;
        if (vm.working_set) measured = measure_idle(*vm.working_set, vm.actual.value_or(x.current), c_.idle_after);
        if (measured) {
            x.active = std::min(measured->working_set, vm.memory);
            x.reason = "working set " + format_size(measured->working_set) + " measured from page ages (" +
                       format_size(measured->idle) + " idle " + format_duration(c_.idle_after) + " or longer; " +
                       format_size(used) + " by total - available)";
        }
        if (vm.previous) {
            const GuestStats& p = *vm.previous;
            unsigned& hold = cache_active_[vm.name];
            // Counted for measured guests too, so that one whose ages stop coming falls back
            // knowing its caches were just squeezed.
            if (grew(s.alloc_stalls, p.alloc_stalls) || grew(s.direct_reclaims, p.direct_reclaims))
                hold = c_.reclaim_hold + 1;
            if (hold > 0) {
                --hold;
                // A measured working set already holds a cache in use: the hold is for guessing.
                if (!measured) {
                    const uint64_t free = s.free_memory ? std::min(*s.free_memory, total) : *avail;
                    x.active = std::min(vm.memory, std::max(x.active, total - std::min(total, free)));
                    x.reason += hold == c_.reclaim_hold ? ", caches under reclaim" : ", caches recently under reclaim";
                }
            }
            if (grew(s.major_faults, p.major_faults)) {
                x.pressure = true;
                x.reason = "major faults rising";
            }
            if (grew(s.oom_kills, p.oom_kills)) {
                x.pressure = true;
                x.reason = "allocations failing";
            }
        }
        if (*avail < c_.floor / 2) {
            x.pressure = true;
            x.reason = "available memory " + format_size(*avail) + " below half the floor";
        }
        if (x.pressure) {
            const auto grow = static_cast<uint64_t>(c_.pressure_grow * static_cast<double>(vm.memory));
            x.protect = std::max(x.protect, std::min(vm.memory, x.current + grow));
        }
        x.alloc = x.protect;
    }

    bool infeasible = false;
    if (!budget) {
        for (size_t i = 0; i < vms.size(); ++i) w[i].alloc = vms[i].memory;
    } else {
        uint64_t committed = 0;
        for (const auto& x : w) committed += x.alloc;
        if (committed > *budget) {
            // Guests must keep their working sets even when the budget cannot hold them: the
            // budget is a goal, OOM in a guest is a failure.
            infeasible = true;
        } else {
            uint64_t remaining = *budget - committed;
            auto rho = [&](size_t i) {
                const Work& x = w[i];
                const double idle = static_cast<double>(x.alloc - std::min(x.alloc, x.active));
                const double cost = static_cast<double>(std::min(x.alloc, x.active)) + k * idle;
                return static_cast<double>(vms[i].shares) / std::max(cost, 1.0);
            };
            auto less = [&](size_t a, size_t b) {
                double ra = rho(a), rb = rho(b);
                return ra != rb ? ra < rb : a > b;  // ties: earlier VM first, deterministic
            };
            std::priority_queue<size_t, std::vector<size_t>, decltype(less)> q(less);
            for (size_t i = 0; i < vms.size(); ++i)
                if (w[i].managed && w[i].alloc < vms[i].memory) q.push(i);
            while (remaining > 0 && !q.empty()) {
                size_t i = q.top();
                q.pop();
                uint64_t give = std::min({kChunk, remaining, vms[i].memory - w[i].alloc});
                w[i].alloc += give;
                remaining -= give;
                if (w[i].alloc < vms[i].memory) q.push(i);
            }
        }
    }

    std::vector<PolicyDecision> out;
    for (size_t i = 0; i < vms.size(); ++i) {
        const auto& vm = vms[i];
        Work& x = w[i];
        PolicyDecision d;
        d.name = vm.name;
        d.protect = x.protect;
        d.desired = x.alloc == vm.memory ? vm.memory : std::max(round_mib(x.alloc), x.protect);
        d.desired = std::min(d.desired, vm.memory);
        d.reason = x.reason;
        if (infeasible) d.reason += "; budget below what the guests need";
        if (d.desired < x.current) {
            const uint64_t drop = x.current - d.desired;
            if (drop >= c_.hysteresis) {
                d.target = std::max(d.desired, x.current > c_.max_step ? x.current - c_.max_step : 0);
                d.target = std::max(*d.target, x.protect);
            }
        } else if (d.desired > x.current) {
            // Growing a guest is never delayed under pressure; otherwise the same band applies,
            // except that returning a guest to its full size is always allowed.
            if (x.pressure || d.desired - x.current >= c_.hysteresis || d.desired == vm.memory) d.target = d.desired;
        }
        if (d.target && vm.target && *d.target == *vm.target) d.target.reset();
        if (d.target && !vm.target && vm.actual && *d.target == *vm.actual) d.target.reset();
        out.push_back(std::move(d));
    }
    return out;
}

std::unique_ptr<BalloonPolicy> make_policy(const PolicyConfig& config) {
    if (config.kind == PolicyKind::None) return std::make_unique<NoPolicy>();
    return std::make_unique<IdleTaxPolicy>(config);
}

}  // namespace hangar
