// The fleet's VMs on libvirt hosts: attach to each domain by name, read it and set its balloon
// through libvirt every period, let it go at the end. hangar never starts, stops or destroys a
// domain it did not create (it creates none), and leaves each balloon where its policy last set
// it: a hangar restarted on an overcommitted host must not deflate every guest at once.
//
// libvirt's calls are synchronous: a slow daemon slows the loop (a remote host costs a round trip
// per call), a daemon that is gone fails them and takes only its own VMs out of the fleet.
#include <algorithm>

#include "fleet.h"
#include "fleet_vm.h"
#include "vm_process.h"

namespace hangar {

namespace {
// How many failed reads in a row before hangar stops relying on a domain (a single failure can
// be a daemon busy with something else).
constexpr uint64_t kMaxFailedReads = 5;
}  // namespace

LibvirtHost* Fleet::connect_host(const std::string& name, std::string& error) {
    if (auto it = hosts_.find(name); it != hosts_.end()) return it->second.get();
    if (auto it = host_errors_.find(name); it != host_errors_.end()) {
        error = it->second;
        return nullptr;
    }
    const auto spec = std::find_if(cfg_.hosts.begin(), cfg_.hosts.end(), [&](const auto& h) { return h.name == name; });
    if (spec == cfg_.hosts.end()) {  // validate() makes this impossible
        error = "unknown host \"" + name + "\"";
        return nullptr;
    }
    auto host = LibvirtHost::open(spec->uri);
    if (host.is_error()) {
        error = host.error().message;
        host_errors_[name] = error;
        report("host " + name + ": " + error + " (its VMs are left out; the others carry on)");
        return nullptr;
    }
    report("host " + name + ": connected to " + spec->uri +
           (spec->budget ? ", budget " + format_size(*spec->budget) : ", no budget"));
    return (hosts_[name] = host.release_value()).get();
}

void Fleet::attach(Vm& vm) {
    const std::string domain_name = vm.spec.domain.empty() ? vm.spec.name : vm.spec.domain;
    auto fail = [&](const std::string& why) { end_vm(vm, VmExit::Kind::AttachFailed, why); };
    std::string error;
    LibvirtHost* host = connect_host(vm.spec.host, error);
    if (!host) return fail(error);
    auto attached = LibvirtDomain::attach(*host, domain_name);
    if (attached.is_error()) return fail(attached.error().message);
    vm.domain = attached.release_value();
    // The domain's size is what its XML says, whatever the fleet file's defaults were.
    vm.spec.memory = vm.domain->max_memory();
    if (vm.spec.min_memory > vm.spec.memory) vm.spec.min_memory = vm.spec.memory;
    if (auto period = vm.domain->set_stats_period(cfg_.stats_interval_s); period.is_error())
        libvirt_problem(vm, period.error().message);
    vm.phase = Vm::Phase::Ready;
    vm.resumed = true;
    report("vm " + vm.spec.name + ": attached to domain " + domain_name + " on " + vm.spec.host + " (" + host->uri() +
           ", " + format_size(vm.spec.memory) + ", " +
           (vm.domain->patched() ? "patched QEMU: Blimp extensions through the monitor" : "standard balloon") + ")");
    poll_domain(vm);
}

void Fleet::libvirt_problem(Vm& vm, const std::string& what) {
    vm.qmp_errors.push_back(what);
    report("vm " + vm.spec.name + ": libvirt: " + what);
}

void Fleet::poll_domain(Vm& vm) {
    if (vm.phase != Vm::Phase::Ready || vm.stopping || !vm.domain) return;
    auto reading = vm.domain->read();
    if (reading.is_error()) {
        if (!vm.domain->host().alive()) return lose_host(vm.spec.host, reading.error().message);
        if (auto running = vm.domain->check_running(); running.is_error())
            return end_vm(vm, VmExit::Kind::DomainEnded, running.error().message);
        if (++vm.failed_reads == kMaxFailedReads) libvirt_problem(vm, reading.error().message);
        return;
    }
    vm.failed_reads = 0;
    DomainReading& r = *reading;
    if (r.actual) vm.actual = r.actual;
    vm.rss = r.rss;
    std::optional<GuestStats> stats = r.stats;
    // A Blimp guest on the patched QEMU reports what libvirt does not pass on (allocation stalls,
    // direct reclaims: the policy's sign that a cache is being squeezed), read from the device
    // itself through the monitor; the standard stats stay the fallback.
    if (vm.domain->patched() && !vm.monitor_stats_off) {
        auto qom = vm.domain->monitor("qom-get", {{"path", kBalloonPath}, {"property", "guest-stats"}});
        if (qom.is_error()) {
            vm.monitor_stats_off = true;  // said once; libvirt's stats keep the policy going
            libvirt_problem(
                vm, "reading the Blimp stats through the monitor failed, using libvirt's: " + qom.error().message);
        } else if (auto full = guest_stats_from_qom(*qom)) {
            stats = full;
        }
    }
    if (stats && stats->last_update != vm.stats_update) {
        vm.prev_stats = vm.stats;
        vm.stats = stats;
        vm.stats_update = stats->last_update;
        vm.stats_seen = Clock::now();
    }
}

void Fleet::set_domain_target(Vm& vm, uint64_t target) {
    if (auto set = vm.domain->set_target(target); set.is_error()) {
        if (!vm.domain->host().alive()) return lose_host(vm.spec.host, set.error().message);
        libvirt_problem(vm, set.error().message);
    }
}

void Fleet::detach(Vm& vm, const std::string& why) {
    if (vm.phase == Vm::Phase::Gone) return;
    vm.stopping = true;
    end_vm(vm, VmExit::Kind::Detached,
           why + "; balloon left at " + (vm.target ? format_size(*vm.target) : std::string("its size")));
}

void Fleet::lose_host(const std::string& host, const std::string& why) {
    report("host " + host + ": lost the connection to libvirt: " + why +
           " (its VMs are left out; the others carry on)");
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.spec.host != host || vm.phase == Vm::Phase::Gone) continue;
        vm.domain.reset();
        end_vm(vm, VmExit::Kind::HostLost, why);
    }
    hosts_.erase(host);
    host_errors_[host] = why;
}

}  // namespace hangar
