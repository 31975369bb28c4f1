// KSM targeting: read every guest's sharing hints into the index, and give each patched QEMU the
// hash filter that makes only pages with a twin mergeable.
#include <unistd.h>
#include <algorithm>

#include "fleet.h"
#include "fleet_vm.h"

namespace hangar {

void Fleet::refresh_hints() {
    if (stopping_) return;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.can_talk() || vm.hints_off || vm.hints_busy || !vm.spec.balloon) continue;
        vm.hints_busy = true;
        vm.hints_accum.clear();
        fetch_hints(vm, 0);
    }
}

void Fleet::fetch_hints(Vm& vm, uint64_t start) {
    Vm* p = &vm;
    vm.qmp->execute("x-blimp-balloon-query-hints", query_hints_args(start), [this, p, start](const QmpReply& r) {
        if (!r.ok) {
            p->hints_busy = false;
            if (r.error_class != "Disconnected") {
                // Without the command (or without share-hints on the device) there is nothing to
                // target; say so once and leave this VM to KSM's defaults.
                p->hints_off = true;
                qmp_problem(*p, "sharing hints unavailable, not targeting KSM for this VM: " + r.describe());
            }
            hints_settled();
            return;
        }
        auto page = parse_hints_page(r.value);
        if (page.is_error()) {
            p->hints_busy = false;
            p->hints_off = true;
            qmp_problem(*p, page.error().message);
            hints_settled();
            return;
        }
        p->hints_accum.insert(p->hints_accum.end(), page->hints.begin(), page->hints.end());
        const uint64_t next = start + page->hints.size();
        if (!page->hints.empty() && next < page->total && !p->stopping) {
            fetch_hints(*p, next);
            sync_watch(*p);
            return;
        }
        sharing_.replace(p->spec.name, p->hints_accum);
        p->hint_pages = sharing_.hinted_pages(p->spec.name);
        p->hints_accum.clear();
        p->hints_busy = false;
        p->hints_read = true;
        hints_settled();
    });
    sync_watch(vm);
}

// Whether `vm` takes part in targeting: its hints are (or will be) read and it gets a filter.
bool Fleet::hint_member(const Vm& vm) const {
    return vm.spec.balloon && !vm.hints_off && vm.phase != Vm::Phase::Gone && !vm.stopping;
}

void Fleet::hints_settled() {
    // Filters follow complete rounds only: a VM whose hints have not been read yet would make the
    // others' twins look unique, and dropping a hash from a filter unmerges its pages.
    for (const auto& up : vms_)
        if (hint_member(*up) && (up->hints_busy || !up->hints_read)) return;
    report_index();
    update_filters();
}

void Fleet::report_index() {
    const ShareScope scope = cfg_.ksm.scope;
    uint64_t pages = 0;
    std::string twins;
    size_t n = 0;
    for (const auto& up : vms_) {
        if (!hint_member(*up)) continue;
        pages += sharing_.hinted_pages(up->spec.name);
        if (n++ < 8)
            twins += (twins.empty() ? "" : ", ") + up->spec.name + " " +
                     std::to_string(sharing_.twins(up->spec.name, scope).size());
    }
    if (n > 8) twins += ", ...";
    const uint64_t saving = sharing_.potential_savings(scope);
    potential_saving_ = std::max(potential_saving_, saving);
    std::string line = "sharing index: " + std::to_string(n) + " VM(s), " + std::to_string(pages) +
                       " hinted pages; twin hashes " + twins + "; best case saves " + std::to_string(saving) +
                       " pages (" + format_size(saving * static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) + ")";
    if (line != last_index_line_) report(line);
    last_index_line_ = line;
}

void Fleet::update_filters() {
    const ShareScope scope = cfg_.ksm.scope;
    for (const auto& up : vms_)
        if (hint_member(*up) && !up->hints_read) return;  // not every VM indexed yet
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.can_talk() || vm.hints_off) continue;
        std::set<uint64_t> want = sharing_.twins(vm.spec.name, scope);
        if (vm.filter_sent && *vm.filter_sent == want) continue;
        Vm* p = &vm;
        vm.qmp->execute("x-blimp-balloon-hint-filter", hint_filter_args(want), [this, p, want](const QmpReply& r) {
            if (r.ok) {
                p->filter_sent = want;
                ++filter_updates_;
                auto num = [&](const char* k) -> std::optional<uint64_t> {
                    if (r.value.contains(k) && r.value[k].is_number_unsigned()) return r.value[k].get<uint64_t>();
                    return std::nullopt;
                };
                p->marked_pages = num("marked-pages");
                p->marked_runs = num("marked-runs");
                report("vm " + p->spec.name + ": KSM targeted at " + std::to_string(want.size()) + " twin hashes" +
                       (p->marked_pages ? ": QEMU marked " + std::to_string(*p->marked_pages) + " pages in " +
                                              std::to_string(p->marked_runs.value_or(0)) + " runs mergeable"
                                        : ""));
                return;
            }
            if (r.error_class == "Disconnected") return;
            p->hints_off = true;
            qmp_problem(*p, "x-blimp-balloon-hint-filter failed: " + r.describe());
        });
        sync_watch(vm);
    }
}

}  // namespace hangar
