#include "libvirt_domain.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <cstdlib>
#include <mutex>

#include "qmp.h"  // the limits on what a QEMU may send hangar

namespace hangar {

using json = nlohmann::json;

namespace {

// libvirt prints every error to stderr by default; hangar reports them itself, with the VM and
// the host they belong to.
void quiet_errors() {
    static std::once_flag once;
    std::call_once(once, [] { virSetErrorFunc(nullptr, [](void*, virErrorPtr) {}); });
}

Error libvirt_error(const std::string& what) {
    const char* msg = virGetLastErrorMessage();
    return Error{what + ": " + (msg ? msg : "unknown libvirt error")};
}

}  // namespace

LibvirtHost::~LibvirtHost() {
    if (conn_) virConnectClose(conn_);
}

ErrorOr<std::unique_ptr<LibvirtHost>> LibvirtHost::open(const std::string& uri) {
    quiet_errors();
    virConnectPtr conn = virConnectOpen(uri.c_str());
    if (!conn) return libvirt_error("cannot connect to libvirt at " + uri);
    return std::unique_ptr<LibvirtHost>(new LibvirtHost(uri, conn));
}

bool LibvirtHost::alive() const { return conn_ && virConnectIsAlive(conn_) == 1; }

DomainReading reading_from_libvirt_stats(const LibvirtStat* stats, int n) {
    DomainReading r;
    GuestStats g;
    auto kib = [](unsigned long long v) { return static_cast<uint64_t>(v) * 1024; };
    for (int i = 0; i < n; ++i) {
        const unsigned long long v = stats[i].value;
        switch (stats[i].tag) {
            case VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON: r.actual = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_RSS: r.rss = kib(v); break;
            // libvirt's names differ from virtio's (docs/libvirt.md): "unused" is MEMFREE,
            // "available" is MEMTOT, "usable" is AVAIL.
            case VIR_DOMAIN_MEMORY_STAT_UNUSED: g.free_memory = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_AVAILABLE: g.total_memory = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_USABLE: g.available_memory = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_DISK_CACHES: g.disk_caches = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_SWAP_IN: g.swap_in = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_SWAP_OUT: g.swap_out = kib(v); break;
            case VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT: g.major_faults = v; break;
            case VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT: g.minor_faults = v; break;
            case VIR_DOMAIN_MEMORY_STAT_HUGETLB_PGALLOC: g.htlb_pgalloc = v; break;
            case VIR_DOMAIN_MEMORY_STAT_HUGETLB_PGFAIL: g.htlb_pgfail = v; break;
            case VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE: g.last_update = v; break;
            default: break;
        }
    }
    // A guest that has never reported has no last_update: its stats are not stats.
    if (g.last_update != 0) r.stats = g;
    return r;
}

LibvirtDomain::~LibvirtDomain() {
    if (dom_) virDomainFree(dom_);
}

ErrorOr<std::unique_ptr<LibvirtDomain>> LibvirtDomain::attach(LibvirtHost& host, const std::string& name) {
    virDomainPtr dom = virDomainLookupByName(host.handle(), name.c_str());
    if (!dom) return libvirt_error("no domain \"" + name + "\" on " + host.uri());
    std::unique_ptr<LibvirtDomain> d(new LibvirtDomain(host, dom, name));
    TRY(d->check_running());
    const unsigned long max_kib = virDomainGetMaxMemory(dom);
    if (max_kib == 0) return libvirt_error("domain \"" + name + "\": cannot read its memory size");
    d->max_memory_ = static_cast<uint64_t>(max_kib) * 1024;
    // The Blimp patches are asked of the domain's QEMU, not assumed from its path: its balloon
    // device lists share-hints (as hangar asks a binary it spawns). A stock QEMU, or a monitor
    // libvirt will not pass commands to, is simply not patched.
    auto props = d->monitor("device-list-properties", {{"typename", "virtio-balloon-device"}});
    if (!props.is_error() && props->is_array())
        for (const auto& p : *props)
            if (p.is_object() && p.value("name", "") == "share-hints") d->patched_ = true;
    return d;
}

ErrorOr<void> LibvirtDomain::check_running() const {
    const int active = virDomainIsActive(dom_);
    if (active < 0) return libvirt_error("domain \"" + name_ + "\" on " + host_->uri());
    if (active == 0) return Error{"domain \"" + name_ + "\" on " + host_->uri() + " is not running"};
    return {};
}

ErrorOr<void> LibvirtDomain::set_stats_period(unsigned seconds) {
    if (virDomainSetMemoryStatsPeriod(dom_, static_cast<int>(seconds), VIR_DOMAIN_AFFECT_LIVE) < 0)
        return libvirt_error("setting the stats period of \"" + name_ + "\"");
    return {};
}

ErrorOr<DomainReading> LibvirtDomain::read() {
    virDomainMemoryStatStruct raw[VIR_DOMAIN_MEMORY_STAT_NR];
    const int n = virDomainMemoryStats(dom_, raw, VIR_DOMAIN_MEMORY_STAT_NR, 0);
    if (n < 0) return libvirt_error("reading the memory stats of \"" + name_ + "\"");
    LibvirtStat stats[VIR_DOMAIN_MEMORY_STAT_NR];
    for (int i = 0; i < n; ++i) stats[i] = {raw[i].tag, raw[i].val};
    return reading_from_libvirt_stats(stats, n);
}

ErrorOr<void> LibvirtDomain::set_target(uint64_t bytes) {
    if (virDomainSetMemoryFlags(dom_, static_cast<unsigned long>(bytes / 1024), VIR_DOMAIN_AFFECT_LIVE) < 0)
        return libvirt_error("setting the balloon of \"" + name_ + "\"");
    return {};
}

ErrorOr<json> LibvirtDomain::monitor(const std::string& command, const json& arguments) {
    json cmd = {{"execute", command}};
    if (!arguments.is_null()) cmd["arguments"] = arguments;
    char* result = nullptr;
    if (virDomainQemuMonitorCommand(dom_, cmd.dump().c_str(), &result, 0) < 0)
        return libvirt_error(command + " on \"" + name_ + "\"");
    std::string text(result ? result : "");
    std::free(result);
    // The same limits as hangar's own QMP client (qmp.h): the domain's QEMU is no more trusted
    // for being reached through libvirt.
    if (text.size() > kQmpMaxMessage || json_nesting_depth(text, kQmpMaxDepth) > kQmpMaxDepth)
        return Error{command + " on \"" + name_ + "\": the reply is larger or deeper than hangar accepts"};
    json reply = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (reply.is_discarded() || !reply.is_object()) return Error{command + ": not a QMP reply: " + text.substr(0, 200)};
    if (reply.contains("error")) {
        const json& e = reply["error"];
        return Error{command + " on \"" + name_ + "\": " + e.value("class", std::string("?")) + ": " +
                     e.value("desc", std::string("?"))};
    }
    return reply.contains("return") ? reply["return"] : json(nullptr);
}

}  // namespace hangar
