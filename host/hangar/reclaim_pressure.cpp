#include "reclaim_pressure.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "config.h"

namespace hangar {

HostMemory read_host_memory(const std::string& proc_root) {
    HostMemory m;
    std::ifstream meminfo(proc_root + "/meminfo");
    std::string line;
    while (std::getline(meminfo, line)) {
        std::istringstream ss(line);
        std::string key;
        uint64_t kib = 0;
        if (!(ss >> key >> kib)) continue;
        if (key == "MemTotal:") m.mem_total = kib * 1024;
        if (key == "MemAvailable:") m.mem_available = kib * 1024;
    }
    std::ifstream psi(proc_root + "/pressure/memory");
    while (std::getline(psi, line)) {
        if (line.rfind("some ", 0) != 0) continue;
        const auto at = line.find("avg10=");
        if (at == std::string::npos) continue;
        const char* text = line.c_str() + at + 6;
        char* end = nullptr;
        const double v = std::strtod(text, &end);
        if (end != text) m.psi_some_avg10 = v;
    }
    return m;
}

ReclaimNeed reclaim_need(std::optional<uint64_t> budget, uint64_t fleet_rss, const HostMemory& host,
                         uint64_t host_reserve) {
    ReclaimNeed need;
    auto consider = [&need](uint64_t bytes, std::string why) {
        if (bytes > need.bytes) {
            need.bytes = bytes;
            need.reason = std::move(why);
        }
    };
    if (budget && fleet_rss > *budget)
        consider(fleet_rss - *budget, "budget: rss " + format_size(fleet_rss) + " > " + format_size(*budget));
    if (host.mem_available && *host.mem_available < host_reserve)
        consider(host_reserve - *host.mem_available,
                 "reserve: MemAvailable " + format_size(*host.mem_available) + " < " + format_size(host_reserve));
    if (host.psi_some_avg10 && *host.psi_some_avg10 >= kPsiSomeAvg10) {
        std::ostringstream why;
        why << "psi: memory some avg10 " << *host.psi_some_avg10 << "%";
        consider(kPsiChunk, why.str());
    }
    return need;
}

}  // namespace hangar
