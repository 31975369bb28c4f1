// Fleet: runs the VMs of one Config to the end and says how each one ended.
//
// One thread, one epoll loop: SIGCHLD/SIGINT/SIGTERM arrive through a signalfd, each QMP
// connection is a non-blocking socket, and periodic work (metrics, policy, QMP connect retries,
// the duration, the shutdown grace period) are timers. A VM that dies, fails to start or loses
// its QMP connection is reported and taken out; the others carry on.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "balloon_policy.h"
#include "config.h"
#include "event_loop.h"
#include "ksm_control.h"
#include "libvirt_domain.h"
#include "metrics.h"
#include "qmp.h"
#include "sharing_index.h"
#include "sharing_qmp.h"
#include "vm_process.h"

namespace hangar {

// hangar's exit statuses (documented in docs/hangar.md and `hangar --help`).
enum ExitStatus : int {
    kExitOk = 0,
    kExitVmFailed = 1,     // at least one VM ended badly (guest status != 0, killed, failed to start...)
    kExitUsage = 2,        // bad command line or config: nothing was started
    kExitEnvironment = 3,  // run directory, KSM control or signal setup failed
    kExitQmpErrors = 4,    // every VM ended well, but QMP commands failed along the way
};

// QEMU's guest-stats QOM property ({"stats": {"stat-free-memory": N, ...}, "last-update": T})
// to GuestStats; values QEMU has never received are 2^64-1 and come back empty. Nothing when
// the guest has never reported (last-update 0) or the value is malformed.
std::optional<GuestStats> guest_stats_from_qom(const json& value);

// The patched QEMU's x-blimp-balloon-working-set reply to a WorkingSetReport; nothing when it is
// malformed (a field missing or of the wrong type).
std::optional<WorkingSetReport> working_set_from_qmp(const json& value);

// The per-host plot beside `png`: out.png -> out.HOST.png.
std::string host_plot_path(const std::string& png, const std::string& host);

class Fleet {
public:
    Fleet(Config config, LaunchPlan plan, std::string run_dir, KsmControl* ksm);
    ~Fleet();

    // Runs until every VM has ended (or the duration passes, or a signal arrives) and everything
    // is stopped. Returns the exit status.
    int run();

private:
    struct Vm;  // fleet_vm.h

    // fleet.cpp: the VMs' lifecycle (launch, QMP connection, stop, reap) and the run itself.
    void launch(Vm& vm);
    void try_connect(Vm& vm);
    void on_qmp_ready(Vm& vm);
    void on_qmp_closed(Vm& vm, const std::string& why);
    void sync_watch(Vm& vm);
    void reap_all();
    void finish_vm(Vm& vm);
    // Takes a VM that never ran under hangar, or no longer does, out of the fleet, and says why.
    void end_vm(Vm& vm, VmExit::Kind kind, const std::string& detail);
    void stop_all(const std::string& why);
    void kill_all();
    void handle_signals();
    void qmp_problem(Vm& vm, const std::string& what);
    bool any_running() const;
    std::optional<uint64_t> host_budget(const std::string& host) const;
    void report(const std::string& line);
    int exit_status() const;
    double now_s() const;

    // policy_loop.cpp: sampling (metrics, status, guest stats) and the balloon policy, one round
    // per host.
    void sample();
    void apply_policy();
    void poll_guest_stats(Vm& vm);
    void send_target(Vm& vm, uint64_t target);

    // fleet_libvirt.cpp: the libvirt back end's side of the lifecycle: attach to a domain on its
    // host, read it, set its balloon, let it go (hangar never starts or stops a domain).
    void attach(Vm& vm);
    LibvirtHost* connect_host(const std::string& name, std::string& error);
    void poll_domain(Vm& vm);
    void set_domain_target(Vm& vm, uint64_t target);
    void detach(Vm& vm, const std::string& why);
    void lose_host(const std::string& host, const std::string& why);
    void libvirt_problem(Vm& vm, const std::string& what);

    // page_state_sweeper.cpp: one round asks the VMs in turn, largest RSS first, for their unused
    // pages, then again for volatile ones, until the need is met.
    void sweep_page_states();
    void sweep_next(std::vector<Vm*> order, size_t i, std::optional<uint64_t> remaining_pages, bool volatile_pass);

    // ksm_targeting.cpp: sharing hints into the index, hash filters out to QEMU.
    void refresh_hints();
    void fetch_hints(Vm& vm, uint64_t start);
    void update_filters();
    void hints_settled();
    void report_index();
    bool hint_member(const Vm& vm) const;

    // fleet_summary.cpp
    void write_summary(int status);

    Config cfg_;
    LaunchPlan plan_;
    std::string run_dir_;
    KsmControl* ksm_;
    EventLoop loop_;
    std::vector<std::unique_ptr<Vm>> vms_;
    // libvirt hosts by name, connected on first use; a host that could not be reached keeps its
    // error, so its other VMs say the same without trying again.
    std::map<std::string, std::unique_ptr<LibvirtHost>> hosts_;
    std::map<std::string, std::string> host_errors_;
    std::unique_ptr<BalloonPolicy> policy_;
    MetricsSampler metrics_;
    StatusView view_;
    SharingIndex sharing_;
    int signal_fd_ = -1;
    bool stopping_ = false;
    bool env_error_ = false;
    int interrupted_by_ = 0;
    std::string stop_reason_;
    std::vector<std::string> ksm_restore_errors_;
    Clock::time_point started_;
    EventLoop::TimerId sample_timer_ = 0;
    EventLoop::TimerId hint_timer_ = 0;
    EventLoop::TimerId sweep_timer_ = 0;
    struct SweepTally {
        uint64_t rounds = 0;                  // rounds that asked QEMU for pages
        uint64_t idle_rounds = 0;             // rounds skipped: no pressure
        uint64_t needed_pages = 0;            // what the pressure rounds needed, summed
        std::optional<std::string> pressure;  // the last round's reason ("" = none; unset before the first)
    } sweep_tally_;
    bool sweep_round_busy_ = false;
    bool targeting_ = false;         // targeted KSM on the patched QEMU: hints drive the filters
    uint64_t potential_saving_ = 0;  // the sharing index's best case, largest seen (pages)
    uint64_t filter_updates_ = 0;
    std::string last_index_line_;
    std::string ksm_lock_;  // the KSM lock held for this run ("" = none)
};

}  // namespace hangar
