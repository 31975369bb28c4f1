// KsmControl: KSM's sysfs knobs, changed only through here so every change can be undone.
//
// KSM is system-wide: a run that leaves pages_to_scan at 10000 or run=0 changes every other
// workload on the host. Each setting's first value is remembered before it is written, kept in a
// save file at one fixed, root-only place for the real KSM (/run/blimp/ksm-saved.json, 0600 in a
// 0700 directory; beside the run for a fake sysfs), and written back in reverse order by
// restore(), which the destructor also calls (and, for a crash, restore_on_crash()'s handler).
// A hangar that was SIGKILLed leaves the file behind: the next KSM user (every hangar, and
// bench/sharing/ksm_util.py) restores it once it holds the lock, if its owner pid is dead.
//
// Other KSM users on the machine (the sharing tests and benchmarks, another hangar) must not
// change the same knobs at the same time: whoever owns the settings holds an exclusive flock on
// a shared lock file (/run/blimp/ksm.lock, 0600, root's; the one bench/sharing/ksm_util.py
// takes), from before the first setting is saved until after the last one is restored.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "error_or.h"

namespace hangar {

struct KsmCounters {
    std::map<std::string, uint64_t> values;  // pages_shared, pages_sharing, full_scans, ...
    std::optional<double> ksmd_cpu_seconds;  // utime + stime of the ksmd kernel thread
    uint64_t get(const std::string& key) const {
        auto it = values.find(key);
        return it == values.end() ? 0 : it->second;
    }
};

inline constexpr const char* kKsmSysfs = "/sys/kernel/mm/ksm";
// Root's KSM state: a directory only root can create entries in (0700), so no other user can
// hold the lock or plant the save file. Under /run: a reboot resets KSM and empties it alike.
inline constexpr const char* kKsmStateDir = "/run/blimp";
inline constexpr const char* kKsmLockPath = "/run/blimp/ksm.lock";
inline constexpr const char* kKsmSaveFile = "/run/blimp/ksm-saved.json";

// Whether `dir` is the kernel's KSM sysfs directory (after resolving symlinks).
bool is_real_ksm_sysfs(const std::string& dir);
// Where the save file goes for `sysfs_dir`: kKsmSaveFile for the real KSM, else RUN_DIR/ksm-saved.json.
std::string ksm_save_path(const std::string& sysfs_dir, const std::string& run_dir);
// The start time of a process (/proc/PID/stat field 22), to tell a live owner from a reused pid.
std::optional<uint64_t> process_start_time(int pid, const std::string& proc_root = "/proc");
// Installs handlers for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT (on an alternate stack) that
// write the saved KSM settings back (async-signal-safe: open/write/close of sysfs files prepared
// in advance) and then die of the signal as before.
void restore_ksm_on_crash();

// How KsmControl serialises with other KSM users.
struct KsmLock {
    std::string path;                                 // "" = no lock (a fake sysfs private to a test)
    std::chrono::milliseconds wait{30000};            // how long to wait for another holder; 0 = not at all
    std::function<void(const std::string&)> on_wait;  // told once, when the lock is busy
    std::function<bool()> cancelled;                  // polled while waiting (a pending SIGINT)
    std::function<void(const std::string&)> on_note;  // told what a stale save restored
};

// The lock file for a KSM sysfs directory given "auto", "none" or a path: "auto" means the
// machine-wide lock for the real sysfs and none for any other directory.
std::string resolve_ksm_lock_path(const std::string& setting, const std::string& sysfs_dir);
// Who holds an flock on `path`, from /proc/locks: "pid 123 (python3 tests/...)", or "".
std::string describe_lock_holder(const std::string& path, const std::string& proc_root = "/proc");

class KsmControl {
public:
    explicit KsmControl(std::string sysfs_dir = "/sys/kernel/mm/ksm", std::string proc_root = "/proc");
    ~KsmControl();
    KsmControl(const KsmControl&) = delete;
    KsmControl& operator=(const KsmControl&) = delete;

    bool available() const;
    // Reads a knob; selection files ("[none] scan-time") yield the selected word.
    std::optional<std::string> read(const std::string& name) const;
    // The lock to take before the first setting is saved (default: none).
    void set_lock(KsmLock lock) { lock_ = std::move(lock); }
    // Takes the lock now if one is configured and not yet held; waits up to lock.wait for another
    // holder. An error (naming the lock and its holder) when it cannot. Once held (or with no
    // lock), a stale save file (its owner dead) is restored first; one whose owner still runs is
    // an error.
    ErrorOr<void> acquire_lock();
    // For a run that changes nothing: restores a stale save file, if there is one, under the lock,
    // and releases the lock again.
    ErrorOr<void> recover_stale();
    bool lock_held() const { return lock_fd_ >= 0; }
    const std::string& lock_path() const { return lock_.path; }

    // Writes a knob, saving its first value (taking the lock first).
    ErrorOr<void> set(const std::string& name, const std::string& value);
    // Applies a mode: off (run=0), blind/targeted (run=1 plus the given tuning).
    ErrorOr<void> apply(const KsmConfig& config);
    // Writes every saved value back (reverse order of first change), then releases the lock;
    // returns the failures (all of them: one failed knob does not stop the others).
    std::vector<std::string> restore();
    const std::vector<std::pair<std::string, std::string>>& saved() const { return saved_; }

    // Where to persist the saved values as they are taken (JSON); "" = nowhere.
    void set_save_file(std::string path) { save_file_ = std::move(path); }
    // Restores from such a file (for `hangar ksm-restore`), under `lock` ("auto" in lock.path:
    // resolved for the sysfs directory used). Writes only to `allowed_sysfs` (the real KSM for
    // the command; a fake directory in tests), only the knobs hangar manages, and only when the
    // file's owner is no longer running.
    static std::vector<std::string> restore_from_file(const std::string& path, std::string sysfs_dir, KsmLock lock = {},
                                                      const std::string& allowed_sysfs = kKsmSysfs,
                                                      const std::string& proc_root = "/proc");

    KsmCounters counters() const;

private:
    void persist() const;
    void release_lock();
    ErrorOr<void> take_lock();
    ErrorOr<void> restore_stale_file();
    void update_crash_plan() const;
    std::optional<int> find_ksmd() const;

    std::string dir_;
    std::string proc_;
    std::vector<std::pair<std::string, std::string>> saved_;
    std::string save_file_;
    KsmLock lock_;
    int lock_fd_ = -1;
    bool stale_checked_ = false;
    mutable std::optional<int> ksmd_pid_;
};

}  // namespace hangar
