// Fleet::Vm: what the fleet knows about one of its VMs. Private to the fleet's own files
// (fleet.cpp and the jobs it is split into); nothing else includes it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fleet.h"
#include "libvirt_domain.h"

namespace hangar {

struct Fleet::Vm {
    VmSpec spec;
    // The back end: a QEMU hangar spawned (proc, with qmp), or a libvirt domain hangar attached
    // to (domain; spec.host names its host). Exactly one of the two is ever used.
    VmProcess proc;
    std::unique_ptr<QmpClient> qmp;
    std::unique_ptr<LibvirtDomain> domain;
    std::optional<uint64_t> rss;     // libvirt: QEMU's RSS as libvirt read it on the domain's host
    uint64_t failed_reads = 0;       // libvirt: reads failed in a row
    bool monitor_stats_off = false;  // libvirt, patched QEMU: the monitor refused; libvirt's stats only
    enum class Phase { Launching, Connecting, Ready, Gone } phase = Phase::Launching;
    std::string qmp_path, serial_log, qemu_log;
    Clock::time_point connect_deadline{};
    int watched_fd = -1;
    bool stopping = false;  // hangar asked it to stop
    bool lost_qmp = false;  // hangar gave up on it after its QMP connection broke
    bool resumed = false;   // "cont" succeeded: the guest has run
    std::optional<uint64_t> actual, target;
    std::optional<GuestStats> stats, prev_stats;
    Clock::time_point stats_seen{};
    uint64_t stats_update = 0;
    std::optional<VmExit> exit;
    std::vector<std::string> qmp_errors;
    std::string last_decision;
    // Sharing (targeted KSM)
    bool hints_busy = false;
    bool hints_off = false;   // this QEMU cannot do it; said once
    bool hints_read = false;  // its hints have been read into the index at least once
    std::vector<Hint> hints_accum;
    std::optional<std::set<uint64_t>> filter_sent;
    uint64_t hint_pages = 0;                            // as last read, kept for the summary after the VM is gone
    std::optional<uint64_t> marked_pages, marked_runs;  // QEMU's answer to the last filter
    // Page-state sweeps
    bool sweeps = false;  // page-states=on on the patched QEMU
    bool sweep_busy = false;
    uint64_t swept_pages = 0;
    uint64_t sweep_asked = 0;  // pages asked for (sweep_when=pressure: max-pages summed)
    // Measured working set (page ages), asked each period of the QEMUs with page states
    bool ages_query = false;
    std::optional<WorkingSetReport> working_set;
    Clock::time_point working_set_seen{};

    bool on_libvirt() const { return !spec.host.empty(); }
    // Holds memory and is managed: a spawned QEMU still running, an attached domain not let go.
    bool live() const { return on_libvirt() ? phase != Phase::Gone : proc.running(); }
    const std::string& host() const {
        static const std::string local(kLocalHost);
        return on_libvirt() ? spec.host : local;
    }
    // Its QMP connection is up (negotiated, not closed).
    bool qmp_up() const { return qmp && qmp->state() == QmpClient::State::Ready; }
    // hangar may send it commands: QMP is up and hangar is not stopping it.
    bool can_talk() const { return phase == Phase::Ready && !stopping && qmp_up(); }
};

}  // namespace hangar
