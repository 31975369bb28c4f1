// The libvirt back end: VMs hangar does not start but finds, by name, on a libvirt daemon
// (qemu:///system here, qemu+ssh://host/system on another machine), and manages through
// libvirt's C API: balloon target, guest stats and QEMU's RSS (which libvirt reads on its own
// host), and the Blimp QMP extensions through libvirt's monitor passthrough when the domain's
// QEMU has them.
//
// Every call is synchronous and answers with ErrorOr carrying libvirt's own message: a bad URI,
// an unknown domain or a daemon that does not answer is an error for the VMs of that host only.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "balloon_policy.h"  // GuestStats
#include "error_or.h"

// libvirt's handle types, without its headers here (only libvirt_domain.cpp includes them).
struct _virConnect;
struct _virDomain;

namespace hangar {

// One connection to one libvirt daemon: a host of the fleet.
class LibvirtHost {
public:
    ~LibvirtHost();
    LibvirtHost(const LibvirtHost&) = delete;
    LibvirtHost& operator=(const LibvirtHost&) = delete;

    static ErrorOr<std::unique_ptr<LibvirtHost>> open(const std::string& uri);
    const std::string& uri() const { return uri_; }
    // False once the daemon has gone (its socket closed, the ssh tunnel died).
    bool alive() const;
    _virConnect* handle() const { return conn_; }

private:
    LibvirtHost(std::string uri, _virConnect* conn) : uri_(std::move(uri)), conn_(conn) {}
    std::string uri_;
    _virConnect* conn_ = nullptr;
};

// What one read of a domain gives (libvirt's virDomainMemoryStats, in bytes here).
struct DomainReading {
    std::optional<uint64_t> actual;   // the balloon's actual: guest memory after the balloon
    std::optional<uint64_t> rss;      // QEMU's resident set on the domain's host
    std::optional<GuestStats> stats;  // none until the guest has reported
};

// libvirt's memory stats (tag, value in libvirt's units: sizes KiB) as hangar's reading. Pure.
struct LibvirtStat {
    int tag;
    unsigned long long value;
};
DomainReading reading_from_libvirt_stats(const LibvirtStat* stats, int n);

class LibvirtDomain {
public:
    ~LibvirtDomain();
    LibvirtDomain(const LibvirtDomain&) = delete;
    LibvirtDomain& operator=(const LibvirtDomain&) = delete;

    // Finds a running domain by name on `host` (which must outlive it).
    static ErrorOr<std::unique_ptr<LibvirtDomain>> attach(LibvirtHost& host, const std::string& name);

    const std::string& name() const { return name_; }
    LibvirtHost& host() const { return *host_; }
    // The domain's maximum memory (its <memory>): the balloon's full size.
    uint64_t max_memory() const { return max_memory_; }
    // The balloon device has the Blimp patches (asked of the QEMU, through the monitor).
    bool patched() const { return patched_; }

    // Nothing: still running. An error: it is not (shut off, destroyed, or the daemon is gone).
    ErrorOr<void> check_running() const;
    // How often the guest sends its stats (virDomainSetMemoryStatsPeriod, live only).
    ErrorOr<void> set_stats_period(unsigned seconds);
    ErrorOr<DomainReading> read();
    // The balloon target (virDomainSetMemoryFlags, live); libvirt counts in KiB.
    ErrorOr<void> set_target(uint64_t bytes);
    // A QMP command through libvirt's monitor passthrough (libvirt-qemu); its "return" value.
    ErrorOr<nlohmann::json> monitor(const std::string& command, const nlohmann::json& arguments = nullptr);

private:
    LibvirtDomain(LibvirtHost& host, _virDomain* dom, std::string name)
        : host_(&host), dom_(dom), name_(std::move(name)) {}
    LibvirtHost* host_;
    _virDomain* dom_;
    std::string name_;
    uint64_t max_memory_ = 0;
    bool patched_ = false;
};

}  // namespace hangar
