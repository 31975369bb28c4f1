#include "ksm_control.h"

#include "qmp.h"
#include "safe_fs.h"
#include "vm_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

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

ErrorOr<void> write_value(const std::string& path, const std::string& value) {
    // sysfs wants one write() of the whole value; an ofstream may split or buffer oddly.
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_TRUNC);
    if (fd < 0) {
        return Error{path + ": " + std::strerror(errno)};
    }
    std::string v = value + "\n";
    ssize_t n = ::write(fd, v.data(), v.size());
    int e = errno;
    ::close(fd);
    if (n != static_cast<ssize_t>(v.size())) {
        return Error{"writing \"" + value + "\" to " + path + ": " + (n < 0 ? std::strerror(e) : "short write")};
    }
    return {};
}

// The knobs hangar may change; counters (pages_shared, ...) are read-only and never "restored".
const std::vector<std::string> kTunables = {"run",
                                            "pages_to_scan",
                                            "sleep_millisecs",
                                            "merge_across_nodes",
                                            "use_zero_pages",
                                            "max_page_sharing",
                                            "stable_node_chains_prune_millisecs",
                                            "smart_scan",
                                            "advisor_mode"};

const std::vector<std::string> kCounters = {
    "pages_shared",  "pages_sharing",      "pages_unshared",   "pages_volatile", "full_scans",    "pages_scanned",
    "pages_skipped", "stable_node_chains", "stable_node_dups", "ksm_zero_pages", "general_profit"};

// A save file as written by persist() (and tests/lib/ksm.py).
struct SaveFile {
    std::string sysfs;
    int pid = 0;
    std::optional<uint64_t> pid_start;
    std::string owner;
    std::vector<std::pair<std::string, std::string>> saved;
};

ErrorOr<SaveFile> load_save_file(const std::string& path) {
    int fd = open_nofollow(path, O_RDONLY);
    if (fd < 0) {
        return Error{path + ": cannot read: " + std::strerror(errno)};
    }
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0 && text.size() < (1u << 20);)
        text.append(buf, static_cast<size_t>(n));
    ::close(fd);
    nlohmann::json j(nlohmann::json::value_t::discarded);
    if (json_nesting_depth(text, 8) <= 8) j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("saved") || !j["saved"].is_array()) {
        return Error{path + ": not a hangar KSM save file"};
    }
    SaveFile f;
    if (j.contains("sysfs") && j["sysfs"].is_string()) f.sysfs = j["sysfs"].get<std::string>();
    if (j.contains("pid") && j["pid"].is_number_unsigned() && j["pid"].get<uint64_t>() < (1u << 30))
        f.pid = static_cast<int>(j["pid"].get<uint64_t>());
    if (j.contains("pid_start") && j["pid_start"].is_number_unsigned()) f.pid_start = j["pid_start"].get<uint64_t>();
    if (j.contains("owner") && j["owner"].is_string()) f.owner = j["owner"].get<std::string>();
    for (const auto& e : j["saved"]) {
        if (!e.is_object() || !e.contains("name") || !e.contains("value") || !e["name"].is_string() ||
            !e["value"].is_string()) {
            return Error{path + ": malformed entry " + e.dump().substr(0, 200)};
        }
        std::string name = e["name"].get<std::string>();
        std::string value = e["value"].get<std::string>();
        if (std::find(kTunables.begin(), kTunables.end(), name) == kTunables.end()) {
            return Error{path + ": refusing to write unknown setting \"" + name + "\""};
        }
        // Knob values are short words or numbers; anything else is not ours to write as root.
        if (value.empty() || value.size() > 32 || !std::all_of(value.begin(), value.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
            })) {
            return Error{path + ": refusing to write \"" + value.substr(0, 40) + "\" to " + name};
        }
        f.saved.emplace_back(name, value);
    }
    return f;
}

// Whether the process that wrote a save file still runs (and is not us): then the settings are
// its to restore.
bool owner_alive(const SaveFile& f, const std::string& proc_root) {
    if (f.pid <= 0 || f.pid == ::getpid()) return false;
    auto start = process_start_time(f.pid, proc_root);
    if (!start) return false;
    return !f.pid_start || *f.pid_start == *start;  // a different start time: the pid was reused
}

std::string owner_text(const SaveFile& f) {
    return "pid " + std::to_string(f.pid) + (f.owner.empty() ? "" : " (" + f.owner + ")");
}

// What the crash handler writes back: prepared whenever the saved settings change.
struct CrashEntry {
    char path[256];
    char value[40];
};
CrashEntry g_crash_plan[16];
volatile sig_atomic_t g_crash_entries = 0;

void crash_handler(int sig) {
    for (int i = g_crash_entries - 1; i >= 0; --i) {
        int fd = ::open(g_crash_plan[i].path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t ignored = ::write(fd, g_crash_plan[i].value, std::strlen(g_crash_plan[i].value));
        (void)ignored;
        ::close(fd);
    }
    const char msg[] = "hangar: fatal signal: KSM settings written back\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    ::signal(sig, SIG_DFL);
    ::raise(sig);
}

std::string seconds_text(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

}  // namespace

bool is_real_ksm_sysfs(const std::string& dir) {
    std::error_code e1, e2;
    auto a = std::filesystem::weakly_canonical(dir, e1);
    auto b = std::filesystem::weakly_canonical(kKsmSysfs, e2);
    return (!e1 && !e2) ? a == b : dir == kKsmSysfs;
}

std::string ksm_save_path(const std::string& sysfs_dir, const std::string& run_dir) {
    return is_real_ksm_sysfs(sysfs_dir) ? kKsmSaveFile : run_dir + "/ksm-saved.json";
}

std::optional<uint64_t> process_start_time(int pid, const std::string& proc_root) {
    std::ifstream in(proc_root + "/" + std::to_string(pid) + "/stat");
    std::string stat;
    if (!std::getline(in, stat)) return std::nullopt;
    auto rp = stat.rfind(')');
    if (rp == std::string::npos || rp + 2 > stat.size()) return std::nullopt;
    std::istringstream ss(stat.substr(rp + 2));
    std::string field;
    for (int i = 3; i <= 22 && (ss >> field); ++i)
        if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
    return std::nullopt;
}

void restore_ksm_on_crash() {
    static char altstack[64 * 1024];
    stack_t ss{};
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    ::sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_handler = crash_handler;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) ::sigaction(s, &sa, nullptr);
}

std::string resolve_ksm_lock_path(const std::string& setting, const std::string& sysfs_dir) {
    if (setting.empty() || setting == "none") return "";
    if (setting != "auto") return setting;
    // Only the real KSM needs the machine-wide lock; a fake sysfs directory is private to its test.
    return is_real_ksm_sysfs(sysfs_dir) ? kKsmLockPath : "";
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

ErrorOr<void> KsmControl::acquire_lock() {
    if (lock_fd_ < 0 && !lock_.path.empty()) TRY(take_lock());
    if (!stale_checked_) {
        // Under the lock: no other KSM user is between its save and its restore now.
        if (auto restored = restore_stale_file(); restored.is_error()) {
            release_lock();
            return restored.error();
        }
        stale_checked_ = true;
    }
    return {};
}

ErrorOr<void> KsmControl::recover_stale() {
    if (save_file_.empty() || ::access(save_file_.c_str(), F_OK) != 0) return {};
    TRY(acquire_lock());
    if (saved_.empty()) release_lock();
    return {};
}

ErrorOr<void> KsmControl::restore_stale_file() {
    if (save_file_.empty()) return {};
    struct stat st {};
    if (::lstat(save_file_.c_str(), &st) != 0) return {};  // none: the last owner restored
    auto f = load_save_file(save_file_);
    if (f.is_error()) return Error{"cannot restore stale KSM settings: " + f.error().message};
    if (owner_alive(*f, proc_)) {
        return Error{"KSM settings saved in " + save_file_ + " by " + owner_text(*f) +
                     ", which still runs, are not restored yet; stop it (it restores on exit) or check it"};
    }
    if (!f->sysfs.empty() && f->sysfs != dir_ && !(is_real_ksm_sysfs(f->sysfs) && is_real_ksm_sysfs(dir_))) {
        return Error{save_file_ + " is for " + f->sysfs + ", not " + dir_ + ": move it away or run hangar ksm-restore"};
    }
    std::string done;
    for (auto it = f->saved.rbegin(); it != f->saved.rend(); ++it) {
        auto now = read(it->first);
        if (now && *now == it->second) continue;
        TRY(write_value(dir_ + "/" + it->first, it->second));
        done += (done.empty() ? "" : ", ") + it->first + "=" + it->second;
    }
    ::unlink(save_file_.c_str());
    if (lock_.on_note)
        lock_.on_note("restored KSM settings left by " + owner_text(*f) + ", which is no longer running" +
                      (done.empty() ? " (they were already in place)" : ": " + done));
    return {};
}

ErrorOr<void> KsmControl::take_lock() {
    const std::string& path = lock_.path;
    if (path == kKsmLockPath) {
        // Root's own directory: no other user can create (and so hold) the lock there.
        if (auto dir = make_private_dir(kKsmStateDir, 0700); dir.is_error())
            return Error{"KSM state directory: " + dir.error().message};
    } else {
        std::error_code ec;  // a lock of the operator's choice (--ksm-lock PATH), or a test's
        std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    }
    // O_CLOEXEC: the QEMUs hangar starts must not inherit (and so prolong) the lock.
    int fd = open_nofollow(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0) {
        return Error{"cannot open the KSM lock " + path + ": " + std::strerror(errno) +
                     (errno == EACCES ? " (KSM control needs root)" : "")};
    }
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + lock_.wait;
    bool told = false;
    for (;;) {
        if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
            lock_fd_ = fd;
            return {};
        }
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK) {
            Error error{"cannot lock " + path + ": " + std::strerror(errno)};
            ::close(fd);
            return error;
        }
        const auto now = std::chrono::steady_clock::now();
        std::string holder = describe_lock_holder(path, proc_);
        if (holder.empty()) holder = "another process";
        if (now >= deadline) {
            ::close(fd);
            return Error{"KSM is in use by another experiment: " + path + " is held by " + holder +
                         (lock_.wait.count() > 0 ? ", still after " + seconds_text(lock_.wait) : "") +
                         ". Wait for it to finish, allow a longer wait (--ksm-lock-wait), or leave KSM alone "
                         "(--ksm unchanged)"};
        }
        if (!told && lock_.on_wait) {
            lock_.on_wait(path + " is held by " + holder + ": waiting up to " + seconds_text(lock_.wait) +
                          " for it to be released");
            told = true;
        }
        if (lock_.cancelled && lock_.cancelled()) {
            ::close(fd);
            return Error{"interrupted while waiting for the KSM lock " + path};
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

ErrorOr<void> KsmControl::set(const std::string& name, const std::string& value) {
    if (std::find(kTunables.begin(), kTunables.end(), name) == kTunables.end()) {
        return Error{"KSM setting \"" + name + "\" is not one hangar manages"};
    }
    // Under the lock before anything is read: the value saved is the one other KSM users left.
    TRY(acquire_lock());
    auto current = read(name);
    if (!current) {
        return Error{dir_ + "/" + name + ": cannot read (" + std::strerror(errno) + ")"};
    }
    bool first = std::none_of(saved_.begin(), saved_.end(), [&](const auto& s) { return s.first == name; });
    if (first) {
        saved_.emplace_back(name, *current);
        persist();  // before the write: a crash right after it must still be undoable
        update_crash_plan();
    }
    if (*current == value) return {};
    return write_value(dir_ + "/" + name, value);
}

ErrorOr<void> KsmControl::apply(const KsmConfig& c) {
    if (c.mode == KsmMode::Unchanged) return {};
    if (!available()) {
        return Error{"KSM is not available (" + dir_ + "/run missing: kernel without CONFIG_KSM?)"};
    }
    const bool has_smart_scan = access((dir_ + "/smart_scan").c_str(), R_OK) == 0;
    if (c.smart_scan && !has_smart_scan)
        return Error{dir_ + "/smart_scan: this kernel's KSM has no smart scan (Linux 6.7 added it)"};
    std::optional<uint64_t> smart_scan = c.smart_scan;
    if (!smart_scan && c.mode == KsmMode::Targeted && has_smart_scan) smart_scan = 0;  // see KsmConfig
    std::vector<std::pair<std::string, std::optional<uint64_t>>> tuning = {
        {"pages_to_scan", c.pages_to_scan},
        {"sleep_millisecs", c.sleep_millisecs},
        {"use_zero_pages", c.use_zero_pages},
        {"smart_scan", smart_scan},
    };
    if (c.merge_across_nodes) {
        // The kernel refuses this while pages are merged (EBUSY); say so rather than guess.
        if (auto merge = set("merge_across_nodes", std::to_string(*c.merge_across_nodes)); merge.is_error())
            return Error{merge.error().message + " (merge_across_nodes can only change while no pages are shared)"};
    }
    for (auto& [name, value] : tuning)
        if (value) TRY(set(name, std::to_string(*value)));
    return set("run", c.mode == KsmMode::Off ? "0" : "1");
}

std::vector<std::string> KsmControl::restore() {
    std::vector<std::string> failures;
    // Reverse order: "run" is usually the last thing set, and is put back first, so ksmd stops
    // before its tuning changes under it.
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
        auto now = read(it->first);
        if (now && *now == it->second) continue;
        if (auto written = write_value(dir_ + "/" + it->first, it->second); written.is_error())
            failures.push_back(written.error().message);
    }
    saved_.clear();
    update_crash_plan();
    if (failures.empty() && !save_file_.empty()) ::unlink(save_file_.c_str());
    // Whatever could not be put back is reported; holding the lock longer would not fix it.
    release_lock();
    return failures;
}

void KsmControl::persist() const {
    if (save_file_.empty()) return;
    nlohmann::json j = {{"sysfs", dir_}, {"owner", "hangar"}, {"pid", ::getpid()}, {"saved", nlohmann::json::array()}};
    if (auto start = process_start_time(::getpid())) j["pid_start"] = *start;
    for (const auto& [k, v] : saved_) j["saved"].push_back({{"name", k}, {"value", v}});
    // 0600, a fresh file renamed into place: nothing planted at the name is followed.
    if (auto written = write_file_atomic(save_file_, j.dump(2) + "\n", 0600); written.is_error())
        std::fprintf(stderr, "hangar: KSM: cannot save settings: %s\n", written.error().message.c_str());
}

void KsmControl::update_crash_plan() const {
    int n = 0;
    g_crash_entries = 0;  // a handler running meanwhile sees no half-written entry
    for (const auto& [k, v] : saved_) {
        const std::string path = dir_ + "/" + k;
        if (n >= 16 || path.size() >= sizeof g_crash_plan[0].path || v.size() + 2 > sizeof g_crash_plan[0].value)
            continue;
        std::memcpy(g_crash_plan[n].path, path.c_str(), path.size() + 1);
        std::memcpy(g_crash_plan[n].value, (v + "\n").c_str(), v.size() + 2);
        ++n;
    }
    g_crash_entries = n;
}

std::vector<std::string> KsmControl::restore_from_file(const std::string& path, std::string sysfs_dir, KsmLock lock,
                                                       const std::string& allowed_sysfs, const std::string& proc_root) {
    auto f = load_save_file(path);
    if (f.is_error()) return {f.error().message};
    if (sysfs_dir.empty()) sysfs_dir = f->sysfs;
    if (sysfs_dir.empty()) return {path + ": names no KSM directory"};
    // Only the real KSM's knobs (a test's fake directory in the unit tests): a file that names
    // another directory must not steer root's writes there.
    std::error_code e1, e2;
    auto a = std::filesystem::weakly_canonical(sysfs_dir, e1);
    auto b = std::filesystem::weakly_canonical(allowed_sysfs, e2);
    if (e1 || e2 || a != b)
        return {path + ": refusing to write to " + sysfs_dir + ": only " + allowed_sysfs + " is KSM's sysfs directory"};
    if (owner_alive(*f, proc_root))
        return {path + ": its owner, " + owner_text(*f) + ", is still running; it restores KSM when it exits"};
    KsmControl k(sysfs_dir, proc_root);
    k.saved_ = f->saved;
    k.stale_checked_ = true;  // this file is the stale one
    // A hangar that died released its lock with its descriptors; another KSM user may own the
    // settings now, so restore only once they are done.
    lock.path = resolve_ksm_lock_path(lock.path, k.dir_);
    k.set_lock(std::move(lock));
    if (auto locked = k.acquire_lock(); locked.is_error()) {
        k.saved_.clear();
        return {locked.error().message};
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
