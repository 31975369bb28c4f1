#include "ksm_control.h"

#include "vm_process.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <thread>
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

std::string seconds_text(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

}  // namespace

std::string resolve_ksm_lock_path(const std::string& setting, const std::string& sysfs_dir) {
    if (setting.empty() || setting == "none") return "";
    if (setting != "auto") return setting;
    // Only the real KSM needs the machine-wide lock; a fake sysfs directory is private to its test.
    std::error_code e1, e2;
    auto a = std::filesystem::weakly_canonical(sysfs_dir, e1);
    auto b = std::filesystem::weakly_canonical(kKsmSysfs, e2);
    const bool real = (!e1 && !e2) ? a == b : sysfs_dir == kKsmSysfs;
    return real ? kKsmLockPath : "";
}

std::string describe_lock_holder(const std::string& path, const std::string& proc_root) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return "";
    std::ifstream locks(proc_root + "/locks");
    std::string line;
    while (std::getline(locks, line)) {
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:10780673 0 EOF"; waiters have "->" before the type.
        std::istringstream ss(line);
        std::vector<std::string> f;
        for (std::string w; ss >> w;) f.push_back(w);
        if (f.size() < 6 || f[1] == "->") continue;
        unsigned maj = 0, min = 0;
        unsigned long long ino = 0;
        if (std::sscanf(f[5].c_str(), "%x:%x:%llu", &maj, &min, &ino) != 3) continue;
        if (ino != st.st_ino || maj != major(st.st_dev) || min != minor(st.st_dev)) continue;
        const std::string pid = f[4];
        std::string who = "pid " + pid;
        std::ifstream in(proc_root + "/" + pid + "/cmdline");
        std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::replace(cmd.begin(), cmd.end(), '\0', ' ');
        while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
        if (cmd.size() > 160) cmd = cmd.substr(0, 157) + "...";
        if (!cmd.empty()) who += " (" + cmd + ")";
        return who;
    }
    return "";
}

KsmControl::KsmControl(std::string sysfs_dir, std::string proc_root)
    : dir_(std::move(sysfs_dir)), proc_(std::move(proc_root)) {}

KsmControl::~KsmControl() {
    restore();
    release_lock();
}

bool KsmControl::acquire_lock(std::string& error) {
    if (lock_.path.empty() || lock_fd_ >= 0) return true;
    const std::string& path = lock_.path;
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    // O_CLOEXEC: the QEMUs hangar starts must not inherit (and so prolong) the lock.
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0 && (errno == EACCES || errno == EROFS)) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error = "cannot open the KSM lock " + path + ": " + std::strerror(errno);
        return false;
    }
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + lock_.wait;
    bool told = false;
    for (;;) {
        if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
            lock_fd_ = fd;
            return true;
        }
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK) {
            error = "cannot lock " + path + ": " + std::strerror(errno);
            ::close(fd);
            return false;
        }
        const auto now = std::chrono::steady_clock::now();
        std::string holder = describe_lock_holder(path, proc_);
        if (holder.empty()) holder = "another process";
        if (now >= deadline) {
            error = "KSM is in use by another experiment: " + path + " is held by " + holder +
                    (lock_.wait.count() > 0 ? ", still after " + seconds_text(lock_.wait) : "") +
                    ". Wait for it to finish, allow a longer wait (--ksm-lock-wait), or leave KSM alone "
                    "(--ksm unchanged)";
            ::close(fd);
            return false;
        }
        if (!told && lock_.on_wait) {
            lock_.on_wait(path + " is held by " + holder + ": waiting up to " + seconds_text(lock_.wait) +
                          " for it to be released");
            told = true;
        }
        if (lock_.cancelled && lock_.cancelled()) {
            error = "interrupted while waiting for the KSM lock " + path;
            ::close(fd);
            return false;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
        std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(100)));
    }
}

void KsmControl::release_lock() {
    if (lock_fd_ < 0) return;
    ::close(lock_fd_);  // closing the only descriptor of this open file releases the flock
    lock_fd_ = -1;
}

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
    // Under the lock before anything is read: the value saved is the one other KSM users left.
    if (!acquire_lock(error)) return false;
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
    // Whatever could not be put back is reported; holding the lock longer would not fix it.
    release_lock();
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

std::vector<std::string> KsmControl::restore_from_file(const std::string& path, std::string sysfs_dir,
                                                      KsmLock lock) {
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
    // A hangar that died released its lock with its descriptors; another KSM user may own the
    // settings now, so restore only once they are done.
    lock.path = resolve_ksm_lock_path(lock.path, k.dir_);
    k.set_lock(std::move(lock));
    std::string error;
    if (!k.acquire_lock(error)) {
        k.saved_.clear();
        return {error};
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
    if (auto pid = find_ksmd()) c.ksmd_cpu_seconds = read_cpu_seconds(*pid, proc_);
    return c;
}

}  // namespace hangar
