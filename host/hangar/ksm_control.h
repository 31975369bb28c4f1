// KsmControl: KSM's sysfs knobs, changed only through here so every change can be undone.
//
// KSM is system-wide: a run that leaves pages_to_scan at 10000 or run=0 changes every other
// workload on the host. Each setting's first value is remembered before it is written, kept in a
// file beside the run (for `hangar ksm-restore` after a hangar that was SIGKILLed), and written
// back in reverse order by restore(), which the destructor also calls.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config.h"

namespace hangar {

struct KsmCounters {
    std::map<std::string, uint64_t> values;  // pages_shared, pages_sharing, full_scans, ...
    std::optional<double> ksmd_cpu_seconds;  // utime + stime of the ksmd kernel thread
    uint64_t get(const std::string& key) const {
        auto it = values.find(key);
        return it == values.end() ? 0 : it->second;
    }
};

class KsmControl {
public:
    explicit KsmControl(std::string sysfs_dir = "/sys/kernel/mm/ksm", std::string proc_root = "/proc");
    ~KsmControl();
    KsmControl(const KsmControl&) = delete;
    KsmControl& operator=(const KsmControl&) = delete;

    bool available() const;
    // Reads a knob; selection files ("[none] scan-time") yield the selected word.
    std::optional<std::string> read(const std::string& name) const;
    // Writes a knob, saving its first value. Returns false with `error` on failure.
    bool set(const std::string& name, const std::string& value, std::string& error);
    // Applies a mode: off (run=0), blind/targeted (run=1 plus the given tuning).
    bool apply(const KsmConfig& config, std::string& error);
    // Writes every saved value back (reverse order of first change); returns the failures.
    std::vector<std::string> restore();
    const std::vector<std::pair<std::string, std::string>>& saved() const { return saved_; }

    // Where to persist the saved values as they are taken (JSON); "" = nowhere.
    void set_save_file(std::string path) { save_file_ = std::move(path); }
    // Restores from such a file (for `hangar ksm-restore`).
    static std::vector<std::string> restore_from_file(const std::string& path, std::string sysfs_dir);

    KsmCounters counters() const;

private:
    void persist() const;
    std::optional<int> find_ksmd() const;

    std::string dir_;
    std::string proc_;
    std::vector<std::pair<std::string, std::string>> saved_;
    std::string save_file_;
    mutable std::optional<int> ksmd_pid_;
};

}  // namespace hangar
