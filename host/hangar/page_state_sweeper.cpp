// Page-state sweeps: ask each patched QEMU with page-states=on to discard pages its guest marked
// unused or volatile. With sweep_when=pressure (the default) a round asks for exactly what the
// host needs (reclaim_pressure.h) and nothing when it needs nothing; with always, for everything.
#include <algorithm>

#include "fleet.h"
#include "fleet_vm.h"
#include "reclaim_pressure.h"
#include "vm_process.h"

namespace hangar {

void Fleet::sweep_page_states() {
    if (stopping_ || sweep_round_busy_) return;
    std::vector<std::pair<uint64_t, Vm*>> candidates;
    uint64_t fleet_rss = 0;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase == Vm::Phase::Gone || vm.proc.pid() <= 0) continue;
        const uint64_t rss = read_rss(vm.proc.pid()).value_or(0);
        fleet_rss += rss;
        if (vm.sweeps && !vm.sweep_busy && vm.can_talk()) candidates.push_back({rss, &vm});
    }
    if (candidates.empty()) return;
    std::optional<uint64_t> want;  // pages; empty = all
    if (cfg_.policy.sweep_when == SweepWhen::Pressure) {
        const ReclaimNeed need = reclaim_need(cfg_.budget, fleet_rss, read_host_memory(), cfg_.policy.host_reserve);
        // Said when it starts, stops or changes kind (budget, reserve, psi), not every round.
        auto kind = [](const std::string& why) { return why.substr(0, why.find(':')); };
        if (!sweep_tally_.pressure || kind(need.reason) != kind(*sweep_tally_.pressure))
            report(need.bytes
                       ? "page-state sweeps: pressure (" + need.reason + "), asking for " + format_size(need.bytes)
                       : std::string("page-state sweeps: no pressure, nothing asked"));
        sweep_tally_.pressure = need.reason;
        if (!need.bytes) {
            sweep_tally_.idle_rounds++;
            return;
        }
        want = (need.bytes + kPageStatePage - 1) / kPageStatePage;
        sweep_tally_.needed_pages += *want;
    }
    sweep_tally_.rounds++;
    // The VM that costs the host most is asked first.
    std::sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<Vm*> order;
    for (const auto& c : candidates) order.push_back(c.second);
    sweep_round_busy_ = true;
    // With a need: every guest's free memory before any guest's volatile data (a cache the guest
    // must rebuild). Without (always): one pass, everything.
    sweep_next(std::move(order), 0, want, /*volatile_pass=*/!want);
}

void Fleet::sweep_next(std::vector<Vm*> order, size_t i, std::optional<uint64_t> remaining, bool volatile_pass) {
    while (i < order.size() && !order[i]->can_talk()) ++i;
    if (i == order.size() && !volatile_pass && !stopping_ && remaining && *remaining) {
        i = 0;
        volatile_pass = true;
        while (i < order.size() && !order[i]->can_talk()) ++i;
    }
    if (stopping_ || i == order.size() || (remaining && *remaining == 0)) {
        sweep_round_busy_ = false;
        return;
    }
    Vm* p = order[i];
    json args = json::object();
    if (remaining) {
        args["max-pages"] = *remaining;
        p->sweep_asked += *remaining;
    }
    if (!volatile_pass) args["unused-only"] = true;
    p->sweep_busy = true;
    // The protocol makes a sweep safe at any time: QEMU claims only pages the guest marked
    // unused or volatile, by compare-and-swap (docs/spec-virtio-balloon-blimp.md, section 4).
    p->qmp->execute("x-blimp-balloon-discard", args,
                    [this, p, order, i, remaining, volatile_pass](const QmpReply& r) mutable {
                        p->sweep_busy = false;
                        uint64_t claimed = 0;
                        if (r.ok) {
                            for (const char* k : {"discarded-unused", "discarded-volatile"})
                                if (r.value.contains(k) && r.value[k].is_number_unsigned())
                                    p->swept_pages += r.value[k].get<uint64_t>();
                            if (r.value.contains("claimed") && r.value["claimed"].is_number_unsigned())
                                claimed = r.value["claimed"].get<uint64_t>();
                        } else if (r.error_class != "Disconnected") {
                            p->sweeps = false;  // said once; QEMU's own timer (if any) still runs
                            qmp_problem(*p, "page-state sweep failed, not sweeping this VM again: " + r.describe());
                        }
                        if (remaining) *remaining -= std::min(*remaining, claimed);
                        sweep_next(std::move(order), i + 1, remaining, volatile_pass);
                    });
    sync_watch(*p);
}

}  // namespace hangar
