// Page-state sweeps: ask each patched QEMU with page-states=on to discard the pages its guest
// marked unused or volatile.
#include "fleet.h"
#include "fleet_vm.h"

namespace hangar {

void Fleet::sweep_page_states() {
    if (stopping_) return;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.sweeps || vm.sweep_busy || !vm.can_talk()) continue;
        Vm* p = &vm;
        vm.sweep_busy = true;
        // The protocol makes a sweep safe at any time: QEMU claims only pages the guest marked
        // unused or volatile, by compare-and-swap (docs/spec-virtio-balloon-blimp.md, section 4).
        vm.qmp->execute("x-blimp-balloon-discard", json::object(), [this, p](const QmpReply& r) {
            p->sweep_busy = false;
            if (r.ok) {
                for (const char* k : {"discarded-unused", "discarded-volatile"})
                    if (r.value.contains(k) && r.value[k].is_number_unsigned())
                        p->swept_pages += r.value[k].get<uint64_t>();
                return;
            }
            if (r.error_class == "Disconnected") return;
            p->sweeps = false;  // said once; QEMU's own timer (if any) still runs
            qmp_problem(*p, "page-state sweep failed, not sweeping this VM again: " + r.describe());
        });
        sync_watch(vm);
    }
}

}  // namespace hangar
