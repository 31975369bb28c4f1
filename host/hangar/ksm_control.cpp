#include "ksm_control.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace hangar {

namespace {

std::optional<std::string> slurp(const std::string& path) {
    std::ifstream in(path);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

bool write_value(const std::string& path, const std::string& value, std::string& error) {
    // sysfs wants one write() of the whole value; an ofstream may split or buffer oddly.
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_TRUNC);
    if (fd < 0) {
        error = path + ": " + std::strerror(errno);
        return false;
    }
    std::string v = value + "\n";
    ssize_t n = ::write(fd, v.data(), v.size());
    int e = errno;
    ::close(fd);
    if (n != static_cast<ssize_t>(v.size())) {
        error = "writing \"" + value + "\" to " + path + ": " + (n < 0 ? std::strerror(e) : "short write");
        return false;
    }
    return true;
}

// The knobs hangar may change; counters (pages_shared, ...) are read-only and never "restored".
const std::vector<std::string> kTunables = {
    "run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "use_zero_pages",
    "max_page_sharing", "stable_node_chains_prune_millisecs", "smart_scan", "advisor_mode"};

const std::vector<std::string> kCounters = {
    "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
    "pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups", "ksm_zero_pages",
    "general_profit"};

}  // namespace

KsmControl::KsmControl(std::string sysfs_dir, std::string proc_root)
    : dir_(std::move(sysfs_dir)), proc_(std::move(proc_root)) {}

KsmControl::~KsmControl() { restore(); }

bool KsmControl::available() const { return access((dir_ + "/run").c_str(), R_OK) == 0; }

std::optional<std::string> KsmControl::read(const std::string& name) const {
    auto v = slurp(dir_ + "/" + name);
    if (!v) return v;
    auto open = v->find('[');
    auto close = v->find(']');
    if (open != std::string::npos && close != std::string::npos && close > open)
        return v->substr(open + 1, close - open - 1);
    return v;
}

bool KsmControl::set(const std::string& name, const std::string& value, std::string& error) {
    if (std::find(kTunables.begin(), kTunables.end(), name) == kTunables.end()) {
        error = "KSM setting \"" + name + "\" is not one hangar manages";
        return false;
    }
    auto current = read(name);
    if (!current) {
        error = dir_ + "/" + name + ": cannot read (" + std::strerror(errno) + ")";
        return false;
    }
    bool first = std::none_of(saved_.begin(), saved_.end(), [&](const auto& s) { return s.first == name; });
    if (first) {
        saved_.emplace_back(name, *current);
        persist();  // before the write: a crash right after it must still be undoable
    }
    if (*current == value) return true;
    return write_value(dir_ + "/" + name, value, error);
}

bool KsmControl::apply(const KsmConfig& c, std::string& error) {
    if (c.mode == KsmMode::Unchanged) return true;
    if (!available()) {
        error = "KSM is not available (" + dir_ + "/run missing: kernel without CONFIG_KSM?)";
        return false;
    }
    std::vector<std::pair<std::string, std::optional<uint64_t>>> tuning = {
        {"pages_to_scan", c.pages_to_scan},
        {"sleep_millisecs", c.sleep_millisecs},
        {"use_zero_pages", c.use_zero_pages},
    };
    if (c.merge_across_nodes) {
        // The kernel refuses this while pages are merged (EBUSY); say so rather than guess.
        if (!set("merge_across_nodes", std::to_string(*c.merge_across_nodes), error)) {
            error += " (merge_across_nodes can only change while no pages are shared)";
            return false;
        }
    }
    for (auto& [name, value] : tuning)
        if (value && !set(name, std::to_string(*value), error)) return false;
    return set("run", c.mode == KsmMode::Off ? "0" : "1", error);
}

std::vector<std::string> KsmControl::restore() {
    std::vector<std::string> failures;
    // Reverse order: "run" is usually the last thing set, and is put back first, so ksmd stops
    // before its tuning changes under it.
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
        auto now = read(it->first);
        if (now && *now == it->second) continue;
        std::string error;
        if (!write_value(dir_ + "/" + it->first, it->second, error)) failures.push_back(error);
    }
    saved_.clear();
    if (failures.empty() && !save_file_.empty()) ::unlink(save_file_.c_str());
    return failures;
}

void KsmControl::persist() const {
    if (save_file_.empty()) return;
    nlohmann::json j = {{"sysfs", dir_}, {"saved", nlohmann::json::array()}};
    for (const auto& [k, v] : saved_) j["saved"].push_back({{"name", k}, {"value", v}});
    std::string tmp = save_file_ + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << j.dump(2) << "\n";
    }
    std::rename(tmp.c_str(), save_file_.c_str());
}

std::vector<std::string> KsmControl::restore_from_file(const std::string& path, std::string sysfs_dir) {
    auto text = slurp(path);
    if (!text) return {path + ": cannot read: " + std::strerror(errno)};
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("saved") || !j["saved"].is_array())
        return {path + ": not a hangar KSM save file"};
    if (sysfs_dir.empty() && j.contains("sysfs") && j["sysfs"].is_string()) sysfs_dir = j["sysfs"].get<std::string>();
    KsmControl k(sysfs_dir);
    for (const auto& e : j["saved"]) {
        if (!e.is_object() || !e.contains("name") || !e.contains("value") || !e["name"].is_string() ||
            !e["value"].is_string())
            return {path + ": malformed entry " + e.dump()};
        std::string name = e["name"].get<std::string>();
        if (std::find(kTunables.begin(), kTunables.end(), name) == kTunables.end())
            return {path + ": refusing to write unknown setting \"" + name + "\""};
        k.saved_.emplace_back(name, e["value"].get<std::string>());
    }
    auto failures = k.restore();
    if (failures.empty()) ::unlink(path.c_str());
    return failures;
}

std::optional<int> KsmControl::find_ksmd() const {
    if (ksmd_pid_) return ksmd_pid_;
    DIR* d = opendir(proc_.c_str());
    if (!d) return std::nullopt;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        auto comm = slurp(proc_ + "/" + e->d_name + "/comm");
        if (comm && *comm == "ksmd") {
            ksmd_pid_ = std::atoi(e->d_name);
            break;
        }
    }
    closedir(d);
    return ksmd_pid_;
}

KsmCounters KsmControl::counters() const {
    KsmCounters c;
    for (const auto& name : kCounters) {
        auto v = slurp(dir_ + "/" + name);
        if (!v || v->empty()) continue;
        char* end = nullptr;
        errno = 0;
        long long n = std::strtoll(v->c_str(), &end, 10);
        // general_profit may be negative; clamp so the CSV column stays unsigned.
        if (errno == 0 && end && *end == '\0') c.values[name] = n < 0 ? 0 : static_cast<uint64_t>(n);
    }
    if (auto pid = find_ksmd()) {
        auto stat = slurp(proc_ + "/" + std::to_string(*pid) + "/stat");
        if (stat) {
            // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
            auto rp = stat->rfind(')');
            if (rp != std::string::npos) {
                std::istringstream ss(stat->substr(rp + 2));
                std::string field;
                uint64_t utime = 0, stime = 0;
                for (int i = 3; i <= 15 && (ss >> field); ++i) {
                    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
                    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
                }
                long hz = sysconf(_SC_CLK_TCK);
                c.ksmd_cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(hz > 0 ? hz : 100);
            }
        }
    }
    return c;
}

}  // namespace hangar
