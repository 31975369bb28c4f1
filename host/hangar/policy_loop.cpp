// The policy loop: every interval, sample each VM (metrics, status lines, guest stats) and let
// the balloon policy set new targets.
#include <algorithm>

#include "fleet.h"
#include "fleet_vm.h"

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
        if (vm.stats && now - vm.stats_seen > stale_after) {
            vm.stats.reset();
            vm.prev_stats.reset();
        }
        VmSample s;
        s.vm = vm.spec.name;
        s.pid = vm.proc.pid();
        s.memory = vm.spec.memory;
        s.state = vm.stopping                    ? "stopping"
                  : vm.phase == Vm::Phase::Ready ? (vm.spec.start == StartMode::Paused ? "paused" : "running")
                                                 : "starting";
        s.balloon_actual = vm.actual;
        s.balloon_target = vm.target;
        s.stats = vm.stats;
        if (vm.sweeps) s.pstate_discarded = vm.swept_pages;
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
    std::vector<VmObservation> obs;
    std::vector<Vm*> who;
    for (auto& up : vms_) {
        Vm& vm = *up;
        // Not can_talk(): a VM whose QMP connection just closed stays in the policy until hangar
        // stops it (its balloon command then fails as Disconnected, which is not reported).
        if (vm.phase != Vm::Phase::Ready || !vm.spec.balloon || vm.stopping || vm.spec.start == StartMode::Paused)
            continue;
        VmObservation o;
        o.name = vm.spec.name;
        o.memory = vm.spec.memory;
        o.min_memory = vm.spec.min_memory;
        o.shares = vm.spec.shares;
        o.actual = vm.actual;
        o.target = vm.target;
        o.stats = vm.stats;
        o.previous = vm.prev_stats;
        obs.push_back(std::move(o));
        who.push_back(&vm);
    }
    if (obs.empty()) return;
    // The budget covers every VM still holding memory, including those the policy cannot move.
    std::optional<uint64_t> budget = cfg_.budget;
    if (budget) {
        for (auto& up : vms_) {
            Vm& vm = *up;
            if (vm.phase == Vm::Phase::Gone || std::find(who.begin(), who.end(), &vm) != who.end()) continue;
            *budget -= std::min(*budget, vm.spec.memory);
        }
    }
    auto decisions = policy_->decide(obs, budget);
    for (size_t i = 0; i < decisions.size() && i < who.size(); ++i) {
        const auto& d = decisions[i];
        Vm* p = who[i];
        if (!d.target) continue;
        const uint64_t target = *d.target;
        const std::string line = "balloon " + format_size(target) + " (" + d.reason + ")";
        if (line != p->last_decision) {
            report("vm " + p->spec.name + ": " + line);
            p->last_decision = line;
        }
        p->target = target;
        p->qmp->execute("balloon", {{"value", target}}, [this, p](const QmpReply& r) {
            if (!r.ok && r.error_class != "Disconnected") qmp_problem(*p, "balloon failed: " + r.describe());
        });
        sync_watch(*p);
    }
}

}  // namespace hangar
