// Config: what a hangar run is asked to do, from a JSON file and/or command-line flags.
//
// Everything the user can get wrong is caught here, before a single QEMU starts, with a message
// that names the file, the place in it and the offending value.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "error_or.h"

namespace hangar {

using Millis = std::chrono::milliseconds;

enum class Machine { Microvm, Q35, Pc };
enum class KsmMode { Unchanged, Off, Blind, Targeted };
enum class StartMode { Running, Paused };
enum class PolicyKind { IdleTax, None };
// Which hashes count as twins for targeted KSM (SharingIndex): held by another VM, or twice by
// the same VM. Off is the index's "none"; the config never chooses it.
enum class ShareScope { Off, WithinVm, AcrossVms };
// The live status lines: auto (a redrawn block on a terminal, else plain lines), tty, plain, off.
enum class StatusDisplay { Auto, Tty, Plain, Off };

std::string_view to_string(Machine m);
std::string_view to_string(KsmMode m);
std::string_view to_string(ShareScope s);  // "across", "within" (as in the config), "off"

struct VmSpec {
    std::string name;
    std::string app = "hello";
    std::vector<std::string> args;  // passed to the app on the kernel command line
    uint64_t memory = 256ull << 20;
    uint64_t min_memory = 0;  // policy floor; 0 = the policy's default floor
    Machine machine = Machine::Microvm;
    // vCPUs (-smp). Blimp brings up every one QEMU gives and runs an app's threads=N on them; under
    // TCG more than one runs multi-threaded (one host thread per vCPU).
    unsigned vcpus = 1;
    bool balloon = true;
    // Paused VMs hold their memory and never run the guest: a fleet member that stays up without
    // an app that waits (useful until `idle` exists, and for tests).
    StartMode start = StartMode::Running;
    unsigned shares = 1000;                            // relative weight for the overcommit policy (ESX "shares")
    std::string kernel;                                // empty = the fleet's kernel
    std::vector<std::string> qemu_args;                // appended verbatim
    std::map<std::string, std::string> balloon_props;  // extra -device properties (patched QEMU)
    // The libvirt back end (libvirt_domain.h): the name of a HostSpec whose daemon runs this VM
    // as `domain` (default: the VM's name). Empty: hangar starts the QEMU itself. For a domain,
    // the keys about how to start it (app, args, memory, machine, kernel, qemu_args, ...) do not
    // apply: its XML decides; memory is read from the domain.
    std::string host;
    std::string domain;
};

// A libvirt daemon hangar manages domains on, with its own budget: the balloon policy runs per
// host, over that host's VMs. The VMs hangar spawns form the host "local" (kLocalHost), whose
// budget is the fleet's "budget".
struct HostSpec {
    std::string name;
    std::string uri;                 // qemu:///system, qemu+ssh://user@host/system, ...
    std::optional<uint64_t> budget;  // none: the policy never inflates on this host
};
inline constexpr std::string_view kLocalHost = "local";

enum class SweepWhen { Pressure, Always };
ErrorOr<SweepWhen> parse_sweep_when(std::string_view text);  // pressure | always
std::string_view to_string(SweepWhen w);

struct PolicyConfig {
    PolicyKind kind = PolicyKind::IdleTax;  // idle-tax | none
    double tax_rate = 0.75;                 // ESX's default idle memory tax
    uint64_t floor = 32ull << 20;           // headroom kept above a guest's working set
    uint64_t hysteresis = 16ull << 20;
    uint64_t max_step = 256ull << 20;  // largest inflate per VM per period
    double pressure_grow = 0.25;       // fraction of RAM handed back when a guest is under pressure
    // Periods a guest's caches keep counting as active after their reclaim counters last rose: a
    // cache that was just given enough stops reclaiming, and must not then look idle at once
    // (that would take the memory back and start the cycle again).
    unsigned reclaim_hold = 30;
    // A guest that publishes page ages (patched QEMU, page-states=on, Blimp guest): memory idle
    // at least this long is not its working set. 8 s is a bucket boundary of QEMU's age histogram
    // (1, 2, 4, 8, 16 s, ...); a threshold between two boundaries counts from the next one up.
    Millis idle_after{8000};
    // Page-state reclaim (patched QEMU, page-states=on): look this often; 0 = never (QEMU's own
    // timer may still sweep). With sweep_when=pressure (the default) QEMU is asked for exactly
    // what the host needs (reclaim_pressure.h), nothing when it needs nothing; with always, for
    // every unused and volatile page each time.
    Millis sweep{0};
    SweepWhen sweep_when = SweepWhen::Pressure;
    uint64_t host_reserve = 512ull << 20;  // MemAvailable below this is pressure
};

struct KsmConfig {
    KsmMode mode = KsmMode::Unchanged;
    std::optional<uint64_t> pages_to_scan;
    std::optional<uint64_t> sleep_millisecs;
    std::optional<uint64_t> merge_across_nodes;
    std::optional<uint64_t> use_zero_pages;
    // Linux 6.7+ "smart scan" skips a page for up to 8 scans after it failed to merge. Two twins
    // that became mergeable more than ~12 scans apart then keep being visited in different scans
    // and may never meet (docs/sharing.md). Every page targeted mode marks has a twin, so
    // targeted mode turns it off unless this says otherwise; other modes leave it as it is.
    std::optional<uint64_t> smart_scan;
    std::string sysfs = "/sys/kernel/mm/ksm";  // a directory of the same shape, for tests
    // The flock shared with other KSM users (ksm_control.h): "auto" = /run/lock/blimp-ksm.lock
    // for the real sysfs, none for another directory; "none"; or a path. Held while hangar owns
    // KSM's settings; another holder is waited for up to lock_wait, then hangar gives up (exit 3).
    std::string lock = "auto";
    Millis lock_wait{30000};
    // targeted only: hashes need a twin in another VM (across) or in the same VM (within).
    ShareScope scope = ShareScope::AcrossVms;
    Millis hint_refresh{2000};  // how often guests' hints are re-read and filters updated
};

struct Config {
    std::vector<VmSpec> vms;
    std::vector<HostSpec> hosts;
    std::optional<uint64_t> budget;  // host memory budget for all guests; none = no overcommit
    std::string qemu = "auto";       // auto | stock | patched | a path
    // Who the QEMUs run as when hangar is root: auto (the "blimp" user if it exists, else
    // "nobody" with a warning), a user name, or none (root: not recommended).
    std::string qemu_user = "auto";
    std::string qemu_sandbox = "auto";  // QEMU's seccomp -sandbox: auto (on if supported) | on | off
    std::string kernel;                 // empty = found next to the hangar binary
    std::string accel = "tcg";
    std::optional<Millis> duration;  // none = until every VM has exited
    Millis interval{1000};           // metrics and policy period
    Millis grace{5000};              // quit over QMP, then SIGKILL after this long
    Millis qmp_timeout{10000};       // per command, and to connect
    unsigned stats_interval_s = 1;   // guest-stats-polling-interval
    std::string csv;
    std::string plot;
    std::string run_dir;  // empty = a fresh directory under $TMPDIR
    StatusDisplay status = StatusDisplay::Auto;
    PolicyConfig policy;
    KsmConfig ksm;
};

// Upper bounds of numeric settings (validate() names each key's full range in its message).
inline constexpr uint64_t kMaxBudget = 1ull << 50;   // 1 PiB: 256 VMs of 1 TiB fit
inline constexpr uint64_t kMaxKsmKnob = 1ull << 30;  // pages_to_scan, sleep_millisecs

// Parsing primitives, exposed for the flag parser and tests. Each error is a message for the user.
ErrorOr<uint64_t> parse_size(std::string_view text);    // "512M", "1G", "1.5GiB", "4096" (bytes)
ErrorOr<Millis> parse_duration(std::string_view text);  // "60s", "500ms", "2m", "1h", "10" (seconds)
ErrorOr<Machine> parse_machine(std::string_view text);
ErrorOr<KsmMode> parse_ksm_mode(std::string_view text);
ErrorOr<PolicyKind> parse_policy_kind(std::string_view text);        // idle-tax | none
ErrorOr<ShareScope> parse_share_scope(std::string_view text);        // across | within
ErrorOr<StatusDisplay> parse_status_display(std::string_view text);  // auto | tty | plain | off
std::string format_size(uint64_t bytes);                             // "512 MiB", "1.5 GiB"
std::string format_duration(Millis d);                               // "8 s", "500 ms", "2 min"

// One `--vm name=a,app=idle,memory=512M,args="x=1 y=2"` flag.
ErrorOr<VmSpec> parse_vm_flag(std::string_view text);

// A whole fleet file. `origin` names it in messages.
ErrorOr<Config> parse_config_json(std::string_view text, std::string_view origin);
ErrorOr<Config> load_config_file(const std::string& path);

// Cross-field checks (unique names, floors below memory, ...).
ErrorOr<void> validate(const Config& config);

}  // namespace hangar
