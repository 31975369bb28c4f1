// MetricsSampler: what each VM costs the host over time, as CSV rows and a gnuplot plot.
// StatusView: the same numbers as one live line per VM.
#pragma once

#include <sys/types.h>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "balloon_policy.h"
#include "config.h"
#include "error_or.h"
#include "ksm_control.h"

namespace hangar {

struct VmSample {
    std::string vm;
    std::string host = std::string(kLocalHost);  // the libvirt host, or "local" for a QEMU hangar spawned
    pid_t pid = -1;
    std::string state;
    uint64_t memory = 0;
    std::optional<uint64_t> rss;
    std::optional<uint64_t> balloon_actual;
    std::optional<uint64_t> balloon_target;
    std::optional<GuestStats> stats;
    std::optional<uint64_t> ksm_merging_pages;
    std::optional<uint64_t> hint_pages;        // pages the guest hinted (patched QEMU, targeted KSM)
    std::optional<uint64_t> twin_hashes;       // of those hashes, how many have a twin
    std::optional<uint64_t> pstate_discarded;  // pages reclaimed through page states (sweeps, cumulative)
    // From page ages (patched QEMU, page-states=on, a guest that publishes ages), as the policy
    // counts them with policy.idle_after: measure_idle()
    std::optional<uint64_t> measured_working_set;
    std::optional<uint64_t> measured_idle;
};

// The CSV's columns, in order (documented in docs/hangar.md).
const std::vector<std::string>& csv_columns();

// The whole fleet at one sample, counted only when every VM sampled was running with a known
// RSS (a VM booting or gone would make the sum fall for reasons that are not reclaim).
struct FleetPoint {
    double time_s = 0;
    size_t vms = 0;
    uint64_t rss = 0;     // QEMU RSS summed: guest RAM the host backs plus QEMU's own memory
    uint64_t actual = 0;  // balloon actual summed: the guest memory the budget limits
};

// What the host got back, from the fleet points of the samples that had every VM running.
struct HostMemoryStory {
    FleetPoint peak;                        // the largest RSS sum
    FleetPoint end;                         // the last sample with every VM running
    uint64_t returned = 0;                  // peak.rss - end.rss
    std::optional<double> within_budget_s;  // first sample after the peak with rss <= budget
};
std::optional<HostMemoryStory> host_memory_story(const std::vector<FleetPoint>& points, std::optional<uint64_t> budget);

class MetricsSampler {
public:
    explicit MetricsSampler(const KsmControl* ksm, std::string proc_root = "/proc");
    ~MetricsSampler();
    MetricsSampler(const MetricsSampler&) = delete;
    MetricsSampler& operator=(const MetricsSampler&) = delete;

    ErrorOr<void> open_csv(const std::string& path);
    // Completes the samples from /proc (RSS, KSM merging pages of live pids), reads the KSM
    // counters, writes one CSV row per VM and updates the running summary.
    void record(double time_s, std::vector<VmSample>& samples);

    struct VmSummary {
        uint64_t peak_rss = 0;
        uint64_t last_rss = 0;
        uint64_t memory = 0;
        std::optional<uint64_t> min_actual;
        std::optional<uint64_t> last_actual;
        std::optional<double> cpu_seconds;  // QEMU's user+system CPU, as last sampled
    };
    const std::map<std::string, VmSummary>& summary() const { return summary_; }
    const KsmCounters& first_ksm() const { return first_ksm_; }
    const KsmCounters& last_ksm() const { return last_ksm_; }
    size_t rows() const { return rows_; }
    const std::vector<FleetPoint>& fleet() const { return fleet_; }
    // The same per host (the VMs of one libvirt host, or those hangar spawned: "local").
    const std::map<std::string, std::vector<FleetPoint>>& host_fleet() const { return host_fleet_; }

private:
    const KsmControl* ksm_;
    std::string proc_;
    FILE* csv_ = nullptr;
    std::map<std::string, VmSummary> summary_;
    KsmCounters first_ksm_, last_ksm_;
    bool have_ksm_ = false;
    size_t rows_ = 0;
    std::vector<FleetPoint> fleet_;
    std::map<std::string, std::vector<FleetPoint>> host_fleet_;
};

// Writes a gnuplot script next to the PNG and runs gnuplot on the CSV: RSS and balloon size per
// VM over time, and with `fleet` points the fleet's summed RSS and the budget. An error when
// gnuplot is missing or fails.
ErrorOr<void> write_plot(const std::string& csv_path, const std::string& png_path, const std::vector<std::string>& vms,
                         const std::vector<FleetPoint>& fleet = {}, std::optional<uint64_t> budget = {});

class StatusView {
public:
    enum class Mode { Tty, Plain, Off };
    StatusView(Mode mode, FILE* out) : mode_(mode), out_(out) {}
    static Mode choose(StatusDisplay setting, int fd);
    // Tty: redraws the block in place. Plain: prints the lines.
    void show(const std::vector<std::string>& lines);
    // Prints a message to stderr, above the live block (so it is not overdrawn).
    void message(const std::string& line);
    static std::string format_line(const VmSample& s);

private:
    Mode mode_;
    FILE* out_;
    size_t drawn_ = 0;
};

}  // namespace hangar
