// The policy loop: every interval, sample each VM (metrics, status lines, guest stats) and let
// the balloon policy set new targets.
#include <algorithm>

#include "fleet.h"
#include "fleet_vm.h"
#include "host_rounds.h"

namespace hangar {

using namespace std::chrono_literals;

std::optional<GuestStats> guest_stats_from_qom(const json& v) {
    if (!v.is_object()) return std::nullopt;
    auto st = v.find("stats");
    auto lu = v.find("last-update");
    if (st == v.end() || !st->is_object() || lu == v.end() || !lu->is_number_unsigned()) return std::nullopt;
    GuestStats g;
    g.last_update = lu->get<uint64_t>();
    if (g.last_update == 0) return std::nullopt;
    auto get = [&](const char* key) -> std::optional<uint64_t> {
        auto it = st->find(key);
        if (it == st->end() || !it->is_number_unsigned()) return std::nullopt;
        uint64_t n = it->get<uint64_t>();
        if (n == UINT64_MAX) return std::nullopt;  // QEMU's "never reported"
        return n;
    };
    g.free_memory = get("stat-free-memory");
    g.available_memory = get("stat-available-memory");
    g.total_memory = get("stat-total-memory");
    g.disk_caches = get("stat-disk-caches");
    g.major_faults = get("stat-major-faults");
    g.minor_faults = get("stat-minor-faults");
    g.swap_in = get("stat-swap-in");
    g.swap_out = get("stat-swap-out");
    g.htlb_pgalloc = get("stat-htlb-pgalloc");
    g.htlb_pgfail = get("stat-htlb-pgfail");
    g.oom_kills = get("stat-oom-kills");  // these three need Blimp patch 4
    g.alloc_stalls = get("stat-alloc-stalls");
    g.direct_reclaims = get("stat-direct-reclaims");
    return g;
}

std::optional<WorkingSetReport> working_set_from_qmp(const json& v) {
    if (!v.is_object()) return std::nullopt;
    auto count = [](const json& o, const char* key) -> std::optional<uint64_t> {
        auto it = o.find(key);
        if (it == o.end() || !it->is_number_unsigned()) return std::nullopt;
        return it->get<uint64_t>();
    };
    auto ages = v.find("ages");
    auto buckets = v.find("buckets");
    if (ages == v.end() || !ages->is_boolean() || buckets == v.end() || !buckets->is_array()) return std::nullopt;
    WorkingSetReport r;
    r.ages = ages->get<bool>();
    auto clock = count(v, "clock-s");
    auto stable = count(v, "stable"), discarded = count(v, "discarded");
    auto in_flight = count(v, "in-flight"), invalid = count(v, "invalid");
    if (!clock || *clock > UINT32_MAX || !stable || !discarded || !in_flight || !invalid) return std::nullopt;
    r.clock_s = static_cast<uint32_t>(*clock);
    r.stable = *stable;
    r.discarded = *discarded;
    r.in_flight = *in_flight;
    r.invalid = *invalid;
    for (const auto& b : *buckets) {
        if (!b.is_object()) return std::nullopt;
        auto min_age = count(b, "min-age-s"), unused = count(b, "unused"), vol = count(b, "volatile");
        if (!min_age || *min_age > UINT32_MAX || !unused || !vol) return std::nullopt;
        r.buckets.push_back({static_cast<uint32_t>(*min_age), *unused, *vol});
    }
    return r;
}

void Fleet::poll_guest_stats(Vm& vm) {
    Vm* p = &vm;
    vm.qmp->execute("query-balloon", [this, p](const QmpReply& r) {
        if (r.ok && r.value.contains("actual") && r.value["actual"].is_number_unsigned())
            p->actual = r.value["actual"].get<uint64_t>();
        else if (!r.ok && r.error_class != "Disconnected" && p->qmp_errors.size() < 20)
            qmp_problem(*p, "query-balloon failed: " + r.describe());
    });
    vm.qmp->execute("qom-get", {{"path", kBalloonPath}, {"property", "guest-stats"}}, [this, p](const QmpReply& r) {
        if (!r.ok) {
            if (r.error_class != "Disconnected" && p->qmp_errors.size() < 20)
                qmp_problem(*p, "reading guest stats failed: " + r.describe());
            return;
        }
        auto g = guest_stats_from_qom(r.value);
        if (g && g->last_update != p->stats_update) {
            p->prev_stats = p->stats;
            p->stats = g;
            p->stats_update = g->last_update;
            p->stats_seen = Clock::now();
        }
    });
    if (!vm.ages_query) return;
    // QEMU reads the page-state array and the stamps in its main loop, claiming nothing: 5 bytes
    // per guest page (1.25 MiB per GiB of guest) each period. Guests of many GiB would want it
    // asked less often than the stats.
    vm.qmp->execute("x-blimp-balloon-working-set", [this, p](const QmpReply& r) {
        if (r.ok) {
            if (auto ws = working_set_from_qmp(r.value)) {
                p->working_set = std::move(ws);
                p->working_set_seen = Clock::now();
            }
            return;
        }
        if (r.error_class == "Disconnected") return;
        p->ages_query = false;  // said once: the policy goes back to total - available for it
        p->working_set.reset();
        qmp_problem(*p, "reading the working set failed, not asking this VM again: " + r.describe());
    });
}

void Fleet::sample() {
    std::vector<VmSample> samples;
    const auto now = Clock::now();
    // Stats the guest stopped refreshing are no basis for squeezing it.
    const auto stale_after =
        std::max<Clock::duration>(5s, std::chrono::seconds(3 * cfg_.stats_interval_s) + cfg_.interval);
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase == Vm::Phase::Gone) continue;
        // libvirt is asked synchronously, so its numbers are this period's.
        if (vm.on_libvirt()) {
            poll_domain(vm);
            if (vm.phase == Vm::Phase::Gone) continue;
        }
        if (vm.stats && now - vm.stats_seen > stale_after) {
            vm.stats.reset();
            vm.prev_stats.reset();
        }
        if (vm.working_set && now - vm.working_set_seen > stale_after) vm.working_set.reset();
        VmSample s;
        s.vm = vm.spec.name;
        s.host = vm.host();
        s.pid = vm.proc.pid();
        s.rss = vm.rss;  // libvirt's; metrics reads a spawned QEMU's from /proc
        s.memory = vm.spec.memory;
        s.state = vm.stopping                    ? "stopping"
                  : vm.phase == Vm::Phase::Ready ? (vm.spec.start == StartMode::Paused ? "paused" : "running")
                                                 : "starting";
        s.balloon_actual = vm.actual;
        s.balloon_target = vm.target;
        s.stats = vm.stats;
        if (vm.sweeps) s.pstate_discarded = vm.swept_pages;
        if (vm.working_set) {
            // As the policy sees it: against the memory the guest has now.
            if (auto m = measure_idle(*vm.working_set, vm.actual.value_or(vm.spec.memory), cfg_.policy.idle_after)) {
                s.measured_working_set = m->working_set;
                s.measured_idle = m->idle;
            }
        }
        if (targeting_ && !vm.hints_off) {
            s.hint_pages = sharing_.hinted_pages(vm.spec.name);
            s.twin_hashes = vm.filter_sent ? vm.filter_sent->size() : 0;
        }
        samples.push_back(std::move(s));
        if (vm.spec.balloon && vm.can_talk()) {
            poll_guest_stats(vm);
            sync_watch(vm);
        }
    }
    metrics_.record(now_s(), samples);
    std::vector<std::string> lines;
    for (const auto& s : samples) lines.push_back(StatusView::format_line(s));
    if (!lines.empty()) view_.show(lines);
    if (!stopping_) apply_policy();
}

void Fleet::apply_policy() {
    // One round per host: its VMs, its budget (host_rounds.h).
    std::vector<HostMember> members;
    for (auto& up : vms_) {
        const Vm& vm = *up;
        // Not can_talk(): a VM whose QMP connection just closed stays in the policy until hangar
        // stops it (its balloon command then fails as Disconnected, which is not reported).
        const bool movable =
            vm.phase == Vm::Phase::Ready && vm.spec.balloon && !vm.stopping && vm.spec.start != StartMode::Paused;
        members.push_back({vm.host(), vm.spec.memory, vm.phase != Vm::Phase::Gone, movable});
    }
    for (const auto& round : host_rounds(cfg_.hosts, cfg_.budget, members)) {
        std::vector<VmObservation> obs;
        for (size_t i : round.members) {
            const Vm& vm = *vms_[i];
            VmObservation o;
            o.name = vm.spec.name;
            o.memory = vm.spec.memory;
            o.min_memory = vm.spec.min_memory;
            o.shares = vm.spec.shares;
            o.actual = vm.actual;
            o.target = vm.target;
            o.stats = vm.stats;
            o.previous = vm.prev_stats;
            o.working_set = vm.working_set;
            obs.push_back(std::move(o));
        }
        auto decisions = policy_->decide(obs, round.budget);
        for (size_t i = 0; i < decisions.size() && i < round.members.size(); ++i) {
            const auto& d = decisions[i];
            Vm& vm = *vms_[round.members[i]];
            if (!d.target || vm.phase == Vm::Phase::Gone) continue;
            const std::string line = "balloon " + format_size(*d.target) + " (" + d.reason + ")";
            if (line != vm.last_decision) {
                report("vm " + vm.spec.name + ": " + line);
                vm.last_decision = line;
            }
            send_target(vm, *d.target);
        }
    }
}

void Fleet::send_target(Vm& vm, uint64_t target) {
    vm.target = target;
    if (vm.on_libvirt()) return set_domain_target(vm, target);
    Vm* p = &vm;
    vm.qmp->execute("balloon", {{"value", target}}, [this, p](const QmpReply& r) {
        if (!r.ok && r.error_class != "Disconnected") qmp_problem(*p, "balloon failed: " + r.describe());
    });
    sync_watch(vm);
}

}  // namespace hangar
