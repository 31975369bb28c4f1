// VmProcess: one QEMU under hangar's supervision: its command line, its process, how it ended.
#pragma once

#include <sys/types.h>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "error_or.h"

namespace hangar {

// Where a VM's files live and which QEMU runs it.
struct LaunchPlan {
    std::string qemu;      // resolved binary path
    bool patched = false;  // the Blimp patch series (extension properties available)
    std::string kernel;    // resolved blimp.elf
    std::string qmp_socket;
    std::string serial_log;
    std::string accel = "tcg";
    KsmMode ksm = KsmMode::Unchanged;
    // QEMU's seccomp sandbox (-sandbox on,obsolete=deny,elevateprivileges=deny,...).
    bool sandbox = false;
    // The QMP listening socket and the serial log are opened by hangar and handed over as these
    // descriptors (kQmpFd, kSerialFd), so a QEMU that runs unprivileged from its first
    // instruction needs no access to the run directory. false: QEMU opens the paths itself.
    bool pass_fds = false;
    // Who QEMU runs as (set when hangar is root and drops privileges for it).
    std::optional<uid_t> uid{};
    gid_t gid = 0;
    std::vector<gid_t> groups{};
    std::string user{};  // for messages
};

// The descriptor numbers QEMU finds its QMP listening socket and serial log at (pass_fds).
inline constexpr int kQmpFd = 3;
inline constexpr int kSerialFd = 4;
inline constexpr const char* kSandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

// What spawn() does between fork and exec besides the usual.
struct SpawnOptions {
    std::vector<std::pair<int, int>> fds;  // {child fd number, parent fd}: made inheritable there
    std::optional<uid_t> uid;              // drop to this uid/gid/groups before exec
    gid_t gid = 0;
    std::vector<gid_t> groups;
};

// The device id hangar gives the balloon, so its QOM path is known without qom-list.
inline constexpr const char* kBalloonId = "balloon0";
inline constexpr const char* kBalloonPath = "/machine/peripheral/balloon0";

// QEMU's argv (argv[0] = the binary). Pure: unit-tested.
std::vector<std::string> build_qemu_argv(const VmSpec& vm, const LaunchPlan& plan);

// How a VM ended, in words a user can act on.
struct VmExit {
    enum class Kind {
        GuestExit,      // the app returned a status through isa-debug-exit
        UnknownApp,     // the guest said "unknown app" (status 2)
        GuestFault,     // CPU exception or panic (status 125)
        QemuExit,       // QEMU exited on its own without a guest status (0: quit/poweroff)
        QemuError,      // QEMU exited with an error of its own (bad arguments, ...)
        Signaled,       // killed by a signal hangar did not send
        Stopped,        // stopped by hangar (quit over QMP or its signals at shutdown)
        FailedToStart,  // fork/exec failed
        // libvirt domains (hangar attaches to them and never starts or stops them):
        Detached,      // hangar stopped managing it (duration, signal); the domain keeps running
        DomainEnded,   // the domain stopped while hangar managed it (shut down, destroyed)
        AttachFailed,  // its host could not be reached, or the domain is unknown or not running
        HostLost,      // the connection to its libvirt daemon broke during the run
    };
    Kind kind = Kind::QemuExit;
    int guest_status = -1;
    int exit_code = -1;
    int signal = 0;
    std::string detail;  // a line from the serial log or QEMU's stderr that explains it
    bool ok() const;
    std::string describe() const;
    static std::string_view kind_name(Kind k);
};

// Decodes waitpid status with the evidence from the serial log and QEMU's stderr.
// `stopping` says hangar asked it to stop, so SIGTERM/SIGKILL and a plain exit are expected.
// `guest_ran` says the guest was resumed (hangar starts QEMU with -S). It matters because QEMU's
// own error exit (1) is also isa-debug-exit's encoding of guest status 0: a 1 from a QEMU whose
// guest never ran and never printed is QEMU failing, not the app succeeding.
VmExit decode_exit(int wait_status, const std::string& serial, const std::string& qemu_log, bool stopping,
                   bool guest_ran = true);

class VmProcess {
public:
    VmProcess() = default;
    ~VmProcess();
    VmProcess(const VmProcess&) = delete;
    VmProcess& operator=(const VmProcess&) = delete;

    // Forks and execs. stdout/stderr go to `log_path`. An error also when the binary cannot be
    // executed (reported through a close-on-exec pipe, so it is exact).
    ErrorOr<void> spawn(const std::vector<std::string>& argv, const std::string& log_path,
                        const SpawnOptions& options = {});
    // Non-blocking reap; returns true once the process is gone (wait_status() valid).
    bool try_reap();
    void signal(int sig);
    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0 && !reaped_; }
    int wait_status() const { return wait_status_; }

private:
    pid_t pid_ = -1;
    bool reaped_ = false;
    int wait_status_ = 0;
};

// Resident set size of a process in bytes (VmRSS), or nothing if it is gone.
std::optional<uint64_t> read_rss(pid_t pid, const std::string& proc_root = "/proc");
// /proc/<pid>/ksm_merging_pages (Linux 5.19+), or nothing.
std::optional<uint64_t> read_ksm_merging_pages(pid_t pid, const std::string& proc_root = "/proc");
// User + system CPU seconds a process has used (/proc/PID/stat, clock-tick resolution).
std::optional<double> read_cpu_seconds(pid_t pid, const std::string& proc_root = "/proc");

std::string read_file_tail(const std::string& path, size_t max_bytes);

}  // namespace hangar
