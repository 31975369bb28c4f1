// hangar: launches and manages a fleet of blimp VMs. See docs/hangar.md.
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "config.h"
#include "fleet.h"
#include "ksm_control.h"
#include "safe_fs.h"
#include "vm_process.h"

namespace fs = std::filesystem;
using namespace hangar;

namespace {

// The build directory hangar was built in (BUILD/host/hangar/hangar -> BUILD), where blimp.elf
// and the patched QEMU live.
fs::path build_dir() {
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return fs::current_path();
    return exe.parent_path().parent_path().parent_path();
}

bool executable(const fs::path& p) { return ::access(p.c_str(), X_OK) == 0; }

// Whether a QEMU binary carries the Blimp patches: its balloon device lists share-hints. Asking
// the binary beats trusting its path, and costs one short QEMU run.
bool has_blimp_patches(const std::string& qemu) {
    std::string cmd = "'" + qemu + "' -device virtio-balloon-device,help 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return false;
    char buf[512];
    bool found = false;
    while (std::fgets(buf, sizeof buf, p))
        if (std::strstr(buf, "share-hints")) found = true;
    pclose(p);
    return found;
}

// Runs argv (no shell) with stdout/stderr discarded; true when it exits 0. Bounded by `timeout`.
bool runs_ok(const std::vector<std::string>& argv) {
    std::vector<std::string> full = {"timeout", "20"};
    full.insert(full.end(), argv.begin(), argv.end());
    std::vector<char*> c;
    for (auto& s : full) c.push_back(s.data());
    c.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        int null = ::open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execvp(c[0], c.data());
        _exit(127);
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

// Whether this QEMU was built with seccomp: it accepts -sandbox (with every option hangar uses)
// when it parses its command line, before -version makes it exit.
bool qemu_has_sandbox(const std::string& qemu) { return runs_ok({qemu, "-sandbox", kSandboxArg, "-version"}); }

// Whether `user` (uid/gid/groups) can read `path`: asked of the kernel, in a child that has
// dropped to that user, so every directory on the way counts.
bool readable_as(const LaunchPlan& p, const std::string& path) {
    pid_t pid = fork();
    if (pid < 0) return true;  // cannot tell; QEMU will say
    if (pid == 0) {
        if (setgroups(p.groups.size(), p.groups.data()) != 0 || setgid(p.gid) != 0 || setuid(*p.uid) != 0) _exit(2);
        _exit(::access(path.c_str(), R_OK) == 0 ? 0 : 1);
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

const char* kCreateUser = "useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin blimp";

// Who the QEMUs run as (hangar as root only: otherwise they are already unprivileged).
ErrorOr<void> resolve_user(const Config& c, LaunchPlan& plan) {
    if (::geteuid() != 0) return {};
    if (c.qemu_user == "none") {
        std::fprintf(stderr, "hangar: warning: qemu_user none: the QEMUs run as root\n");
        return {};
    }
    std::string name = c.qemu_user;
    struct passwd* pw = nullptr;
    if (name == "auto") {
        name = "blimp";
        pw = getpwnam(name.c_str());
        if (!pw) {
            name = "nobody";
            pw = getpwnam(name.c_str());
            if (pw)
                std::fprintf(
                    stderr,
                    "hangar: warning: no \"blimp\" user: the QEMUs run as \"nobody\", which other services may "
                    "share; create a dedicated user with: %s\n",
                    kCreateUser);
        }
        if (!pw)
            return Error{std::string("neither a \"blimp\" nor a \"nobody\" user exists to run QEMU as; create one: ") +
                         kCreateUser};
    } else {
        pw = getpwnam(name.c_str());
        if (!pw)
            return Error{"qemu_user \"" + name + "\" does not exist; create it (e.g. " +
                         std::string(kCreateUser).replace(std::string(kCreateUser).rfind("blimp"), 5, name) +
                         ") or give --qemu-user auto"};
    }
    if (pw->pw_uid == 0) {
        std::fprintf(stderr, "hangar: warning: qemu_user %s is root: the QEMUs run as root\n", name.c_str());
        return {};
    }
    plan.uid = pw->pw_uid;
    plan.gid = pw->pw_gid;
    plan.user = name;
    int n = 64;
    std::vector<gid_t> groups(static_cast<size_t>(n));
    if (getgrouplist(name.c_str(), pw->pw_gid, groups.data(), &n) < 0) {
        groups.resize(static_cast<size_t>(n));
        if (getgrouplist(name.c_str(), pw->pw_gid, groups.data(), &n) < 0) n = 0;
    }
    groups.resize(static_cast<size_t>(n));
    plan.groups = groups;
    return {};
}

// Turns stock/patched/auto/PATH into a binary. A path is taken as given: if it cannot be
// executed, each VM reports that it failed to start, which is the clearest place to say so.
ErrorOr<LaunchPlan> resolve_plan(const Config& c) {
    LaunchPlan plan;
    // A fleet of libvirt domains only starts no QEMU: no binary, kernel or QEMU user to find.
    if (std::all_of(c.vms.begin(), c.vms.end(), [](const VmSpec& vm) { return !vm.host.empty(); })) return plan;
    const fs::path patched = build_dir() / "qemu" / "qemu-system-x86_64";
    const std::string stock =
        executable("/usr/bin/qemu-system-x86_64") ? "/usr/bin/qemu-system-x86_64" : "qemu-system-x86_64";
    if (c.qemu == "stock") {
        plan.qemu = stock;
    } else if (c.qemu == "patched") {
        if (!executable(patched))
            return Error{"--qemu patched: " + patched.string() + " is not built (host/qemu/build.sh " +
                         build_dir().string() + ")"};
        plan.qemu = patched;
        plan.patched = true;
    } else if (c.qemu == "auto") {
        plan.patched = executable(patched);
        plan.qemu = plan.patched ? patched.string() : stock;
    } else {
        plan.qemu = c.qemu;
        plan.patched = c.qemu.find('\'') == std::string::npos && executable(c.qemu) && has_blimp_patches(c.qemu);
    }
    fs::path kernel = c.kernel.empty() ? build_dir() / "blimp.elf" : fs::path(c.kernel);
    if (!fs::exists(kernel)) return Error{"kernel " + kernel.string() + " not found (make build, or --kernel PATH)"};
    plan.kernel = fs::absolute(kernel);
    plan.accel = c.accel;
    plan.ksm = c.ksm.mode;
    if (c.ksm.mode == KsmMode::Targeted && !plan.patched)
        return Error{"--ksm targeted needs the patched QEMU (share-hints); " + plan.qemu + " is not it"};
    plan.pass_fds = true;
    TRY(resolve_user(c, plan));
    if (plan.uid) {
        // QEMU opens the kernel itself, after hangar has dropped its privileges for it.
        std::vector<std::string> kernels = {plan.kernel};
        for (const auto& vm : c.vms)
            if (!vm.kernel.empty()) kernels.push_back(vm.kernel);
        for (const auto& k : kernels)
            if (!readable_as(plan, k))
                return Error{"kernel " + k + " is not readable by " + plan.user +
                             ", the user the QEMUs run as (make it and its directories readable, or --qemu-user)"};
    }
    if (c.qemu_sandbox != "off") {
        plan.sandbox = qemu_has_sandbox(plan.qemu);
        if (!plan.sandbox && c.qemu_sandbox == "on")
            return Error{"qemu_sandbox on: " + plan.qemu +
                         " has no seccomp sandbox (-sandbox); build it with --enable-seccomp"};
        if (!plan.sandbox)
            std::fprintf(stderr,
                         "hangar: warning: %s has no seccomp sandbox (-sandbox): the QEMUs run without it (build QEMU "
                         "with --enable-seccomp; --qemu-sandbox off silences this)\n",
                         plan.qemu.c_str());
    }
    return plan;
}

// The run directory holds the QMP sockets (root's control of every QEMU) and files hangar writes
// as root, so it must be private: see safe_fs.h. A given one is created 0700 if missing and
// refused if unsafe; the default is a fresh mkdtemp (0700).
ErrorOr<std::string> make_run_dir(const std::string& wanted) {
    std::string dir;
    if (!wanted.empty()) {
        std::error_code ec;
        dir = fs::absolute(wanted, ec).lexically_normal().string();
        if (ec) return Error{"cannot make " + wanted + " an absolute path: " + ec.message()};
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
        if (auto safe = make_private_dir(dir); safe.is_error())
            return Error{"unsafe run directory: " + safe.error().message};
        return dir;
    }
    const char* tmp = getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/hangar-XXXXXX";
    if (!mkdtemp(tmpl.data()))
        return Error{"cannot create a run directory under " + tmpl + ": " + std::strerror(errno)};
    if (auto safe = check_private_dir(tmpl); safe.is_error())
        return Error{"unsafe run directory: " + safe.error().message};
    return tmpl;
}

struct RunFlags {
    std::string config;
    std::vector<std::string> vms;
    std::string budget, qemu, kernel, duration, interval, grace, csv, plot, run_dir, ksm, ksm_sysfs, share_scope,
        policy, status, accel;
    std::string ksm_lock, ksm_lock_wait, qemu_user, qemu_sandbox;
    std::optional<double> tax_rate;
    std::string sweep, sweep_when, host_reserve, idle_after;
    std::optional<uint64_t> ksm_pages_to_scan, ksm_sleep_ms;
    bool dry_run = false;
};

ErrorOr<Config> build_config(const RunFlags& f) {
    Config c;
    if (!f.config.empty()) c = TRY(load_config_file(f.config));
    for (const auto& v : f.vms) c.vms.push_back(TRY(parse_vm_flag(v)));
    for (size_t i = 0; i < c.vms.size(); ++i)
        if (c.vms[i].name.empty()) c.vms[i].name = "vm" + std::to_string(i + 1);
    if (!f.budget.empty()) c.budget = TRY(parse_size(f.budget));
    if (!f.qemu.empty()) c.qemu = f.qemu;
    if (!f.kernel.empty()) c.kernel = f.kernel;
    if (!f.qemu_user.empty()) c.qemu_user = f.qemu_user;
    if (!f.qemu_sandbox.empty()) c.qemu_sandbox = f.qemu_sandbox;
    if (!f.duration.empty()) c.duration = TRY(parse_duration(f.duration));
    if (!f.interval.empty()) c.interval = TRY(parse_duration(f.interval));
    if (!f.grace.empty()) c.grace = TRY(parse_duration(f.grace));
    if (!f.csv.empty()) c.csv = f.csv;
    if (!f.plot.empty()) c.plot = f.plot;
    if (!f.run_dir.empty()) c.run_dir = f.run_dir;
    if (!f.ksm.empty()) c.ksm.mode = TRY(parse_ksm_mode(f.ksm));
    if (!f.ksm_sysfs.empty()) c.ksm.sysfs = f.ksm_sysfs;
    if (!f.share_scope.empty()) c.ksm.scope = TRY(parse_share_scope(f.share_scope));
    if (!f.ksm_lock.empty()) c.ksm.lock = f.ksm_lock;
    if (!f.ksm_lock_wait.empty()) c.ksm.lock_wait = TRY(parse_duration(f.ksm_lock_wait));
    if (f.ksm_pages_to_scan) c.ksm.pages_to_scan = *f.ksm_pages_to_scan;
    if (f.ksm_sleep_ms) c.ksm.sleep_millisecs = *f.ksm_sleep_ms;
    if (!f.policy.empty()) c.policy.kind = TRY(parse_policy_kind(f.policy));
    if (f.tax_rate) c.policy.tax_rate = *f.tax_rate;
    if (!f.idle_after.empty()) c.policy.idle_after = TRY(parse_duration(f.idle_after));
    if (!f.sweep.empty()) c.policy.sweep = TRY(parse_duration(f.sweep));
    if (!f.sweep_when.empty()) c.policy.sweep_when = TRY(parse_sweep_when(f.sweep_when));
    if (!f.host_reserve.empty()) c.policy.host_reserve = TRY(parse_size(f.host_reserve));
    if (!f.status.empty()) c.status = TRY(parse_status_display(f.status));
    if (!f.accel.empty()) c.accel = f.accel;
    TRY(validate(c));
    return c;
}

// The KSM lock as main sets it up: messages on stderr, and a ^C or SIGTERM (blocked, so only
// pending) ends the wait; `signal` says which.
KsmLock ksm_lock(const std::string& setting, const std::string& sysfs, Millis wait, int* signal) {
    KsmLock lock;
    lock.path = resolve_ksm_lock_path(setting, sysfs);
    lock.wait = wait;
    lock.on_wait = [](const std::string& m) { std::fprintf(stderr, "hangar: KSM: %s\n", m.c_str()); };
    lock.on_note = lock.on_wait;
    lock.cancelled = [signal] {
        sigset_t pending;
        sigpending(&pending);
        for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) {
            if (sigismember(&pending, s)) {
                *signal = s;
                return true;
            }
        }
        return false;
    };
    return lock;
}

// What `run` and `check` need before anything starts: the config and how to launch it.
ErrorOr<std::pair<Config, LaunchPlan>> prepare(const RunFlags& f) {
    Config cfg = TRY(build_config(f));
    LaunchPlan plan = TRY(resolve_plan(cfg));
    return std::pair{std::move(cfg), std::move(plan)};
}

int do_run(const RunFlags& f) {
    auto prepared = prepare(f);
    if (prepared.is_error()) {
        std::fprintf(stderr, "hangar: %s\n", prepared.error().message.c_str());
        return kExitUsage;
    }
    auto [cfg, plan] = prepared.release_value();
    if (f.dry_run) {
        for (const auto& vm : cfg.vms) {
            if (!vm.host.empty()) {
                const auto host = std::find_if(cfg.hosts.begin(), cfg.hosts.end(),
                                               [&](const HostSpec& h) { return h.name == vm.host; });
                std::printf("%s: libvirt domain %s on %s (%s)\n", vm.name.c_str(),
                            (vm.domain.empty() ? vm.name : vm.domain).c_str(), vm.host.c_str(), host->uri.c_str());
                continue;
            }
            LaunchPlan p = plan;
            p.qmp_socket = "RUN_DIR/" + vm.name + ".qmp";
            p.serial_log = "RUN_DIR/" + vm.name + ".serial.log";
            for (const auto& a : build_qemu_argv(vm, p)) std::printf("%s ", a.c_str());
            std::printf("\n");
        }
        return kExitOk;
    }
    auto made = make_run_dir(cfg.run_dir);
    if (made.is_error()) {
        std::fprintf(stderr, "hangar: %s\n", made.error().message.c_str());
        return kExitEnvironment;
    }
    const std::string run_dir = made.release_value();
    if (run_dir.size() + 40 > sizeof(sockaddr_un{}.sun_path)) {
        std::fprintf(stderr, "hangar: run directory %s is too long for QMP unix socket paths\n", run_dir.c_str());
        return kExitEnvironment;
    }
    // Output paths from a fleet file are relative to the run directory (a shared config must not
    // write into whatever directory it is started from); flags are relative to the shell's.
    for (auto [path, flag] : {std::pair{&cfg.csv, &f.csv}, std::pair{&cfg.plot, &f.plot}})
        if (!path->empty() && flag->empty() && fs::path(*path).is_relative()) *path = run_dir + "/" + *path;
    if (!cfg.plot.empty() && cfg.csv.empty()) cfg.csv = run_dir + "/metrics.csv";
    if (plan.qemu.empty())
        std::fprintf(stderr, "hangar: run directory %s, libvirt domains only\n", run_dir.c_str());
    else
        std::fprintf(stderr, "hangar: run directory %s, QEMU %s%s, kernel %s\n", run_dir.c_str(), plan.qemu.c_str(),
                     plan.patched ? " (patched)" : "", plan.kernel.c_str());

    // Signals must be blocked before any VM or KSM change exists, so a ^C at any point goes
    // through the orderly path (the fleet reads them from a signalfd).
    sigset_t mask;
    sigemptyset(&mask);
    // SIGHUP and SIGQUIT stop the fleet in the same orderly way (KSM restored); a crash writes
    // KSM back from its signal handler; SIGKILL leaves the save file for the next KSM user.
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    restore_ksm_on_crash();

    KsmControl ksm(cfg.ksm.sysfs);
    const std::string save_file = ksm_save_path(cfg.ksm.sysfs, run_dir);
    ksm.set_save_file(save_file);
    int interrupted = 0;
    ksm.set_lock(ksm_lock(cfg.ksm.lock, cfg.ksm.sysfs, cfg.ksm.lock_wait, &interrupted));
    // A hangar killed with SIGKILL (or a benchmark) left KSM changed: put it back before anything
    // else, whatever this run does with KSM.
    if (cfg.ksm.mode == KsmMode::Unchanged) {
        if (auto recovered = ksm.recover_stale(); recovered.is_error())
            std::fprintf(stderr, "hangar: KSM: %s\n", recovered.error().message.c_str());
    }
    // Before any QEMU starts: a fleet that cannot have KSM as asked does not run at all.
    if (auto applied = ksm.apply(cfg.ksm); applied.is_error()) {
        std::fprintf(stderr, "hangar: KSM: %s\n", applied.error().message.c_str());
        for (const auto& e : ksm.restore()) std::fprintf(stderr, "hangar: KSM restore failed: %s\n", e.c_str());
        return interrupted ? 128 + interrupted : kExitEnvironment;
    }
    if (cfg.ksm.mode != KsmMode::Unchanged) {
        std::string changed;  // what this run set, so a log says why KSM behaved as it did
        for (const auto& [name, old] : ksm.saved()) {
            auto now = ksm.read(name);
            if (name != "run" && now != old)
                changed += (changed.empty() ? ": " : ", ") + name + " " + old + " -> " + now.value_or("?");
        }
        std::fprintf(stderr, "hangar: KSM %s (settings saved in %s, restored on exit%s)%s\n",
                     std::string(to_string(cfg.ksm.mode)).c_str(), save_file.c_str(),
                     ksm.lock_held() ? ("; holding " + ksm.lock_path()).c_str() : "", changed.c_str());
    }
    // The last-resort catch (error_or.h): nothing hangar means to report throws, but the event
    // loop's epoll failures, a json type_error or std::bad_alloc still end in a message and exit 3.
    try {
        Fleet fleet(cfg, plan, run_dir, &ksm);
        return fleet.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hangar: internal error: %s\n", e.what());
        return kExitEnvironment;
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"hangar: launch and manage a fleet of blimp VMs (overcommit policy, KSM control, metrics)"};
    app.require_subcommand(1);
    app.footer(
        "Exit status: 0 all VMs ended well (or were stopped by hangar); 1 a VM failed (guest status != 0,\n"
        "unknown app, fault, QEMU died or failed to start, QMP lost); 2 bad command line or config;\n"
        "3 environment (run directory, KSM, signals); 4 QMP commands failed but every VM ended well;\n"
        "128+N stopped by signal N. See docs/hangar.md.");

    RunFlags f;
    auto* run = app.add_subcommand("run", "launch the fleet and manage it until it ends");
    auto* check = app.add_subcommand("check", "validate a config (and flags), print the QEMU command lines");
    for (auto* sub : {run, check}) {
        sub->add_option("-c,--config", f.config, "fleet file (JSON)");
        sub->add_option("--vm", f.vms,
                        "a VM: name=a,app=hello,memory=512M,machine=microvm,args=\"x=1 y=2\" (repeatable)");
        sub->add_option("--budget", f.budget, "host memory budget for all guests, e.g. 1G");
        sub->add_option("--qemu", f.qemu, "stock | patched | auto | PATH (default auto: patched if built)");
        sub->add_option("--kernel", f.kernel, "blimp.elf (default: next to the build)");
        sub->add_option("--qemu-user", f.qemu_user,
                        "who the QEMUs run as when hangar is root: auto (default: blimp, else nobody) | USER | none");
        sub->add_option("--qemu-sandbox", f.qemu_sandbox,
                        "QEMU's seccomp sandbox: auto (default: on if supported) | on | off");
        sub->add_option("--duration", f.duration, "stop everything after this long, e.g. 60s");
        sub->add_option("--interval", f.interval, "metrics and policy period (default 1s)");
        sub->add_option("--grace", f.grace, "time between QMP quit and SIGKILL (default 5s)");
        sub->add_option("--csv", f.csv, "write metrics here (one row per VM per sample)");
        sub->add_option("--plot", f.plot, "write a PNG plot of RSS and balloon per VM (gnuplot)");
        sub->add_option("--run-dir", f.run_dir, "directory for QMP sockets and logs (default: fresh under $TMPDIR)");
        sub->add_option("--ksm", f.ksm, "unchanged | off | blind | targeted");
        sub->add_option("--ksm-pages-to-scan", f.ksm_pages_to_scan, "KSM pages_to_scan while running");
        sub->add_option("--ksm-sleep-ms", f.ksm_sleep_ms, "KSM sleep_millisecs while running");
        sub->add_option("--ksm-sysfs", f.ksm_sysfs, "KSM sysfs directory (default /sys/kernel/mm/ksm)");
        sub->add_option("--ksm-lock", f.ksm_lock,
                        "lock shared with other KSM users: auto (default: /run/blimp/ksm.lock for the real "
                        "sysfs) | none | PATH");
        sub->add_option("--ksm-lock-wait", f.ksm_lock_wait,
                        "how long to wait for another holder of the KSM lock before giving up (default 30s)");
        sub->add_option("--share-scope", f.share_scope, "targeted KSM: across (twins in other VMs, default) | within");
        sub->add_option("--policy", f.policy, "idle-tax | none");
        sub->add_option("--tax-rate", f.tax_rate, "idle memory tax rate in [0,1) (default 0.75)");
        sub->add_option("--idle-after", f.idle_after,
                        "guests that publish page ages: memory idle this long is not in the working set "
                        "(default 8s)");
        sub->add_option("--sweep", f.sweep,
                        "page-state reclaim period for VMs with balloon_props page-states=on (patched QEMU)");
        sub->add_option("--sweep-when", f.sweep_when,
                        "pressure (default: ask QEMU for what the host needs, nothing without pressure) | always");
        sub->add_option("--host-reserve", f.host_reserve,
                        "MemAvailable below this is pressure for page-state sweeps (default 512M)");
        sub->add_option("--status", f.status, "auto | tty | plain | off");
        sub->add_option("--accel", f.accel, "tcg (default) | kvm");
    }
    run->add_flag("--dry-run", f.dry_run, "print the QEMU command lines and exit");

    std::string restore_file = kKsmSaveFile, restore_lock = "auto", restore_lock_wait = "30s";
    auto* restore =
        app.add_subcommand("ksm-restore", "put back KSM settings saved by a hangar that did not exit cleanly");
    restore->add_option("file", restore_file, std::string("the save file (default ") + kKsmSaveFile + ")");
    restore->add_option("--ksm-lock", restore_lock, "auto (default) | none | PATH, as for run");
    restore->add_option("--ksm-lock-wait", restore_lock_wait, "how long to wait for the KSM lock (default 30s)");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return kExitUsage;
    }
    if (*run) return do_run(f);
    if (*check) {
        f.dry_run = true;
        return do_run(f);
    }
    if (*restore) {
        auto wait = parse_duration(restore_lock_wait);
        if (wait.is_error()) {
            std::fprintf(stderr, "hangar: %s\n", wait.error().message.c_str());
            return kExitUsage;
        }
        int interrupted = 0;
        KsmLock lock = ksm_lock("none", "", wait.value(), &interrupted);
        lock.path = restore_lock;  // resolved against the sysfs directory the file names
        // Only ever the real KSM directory, whatever the file says.
        if (::access(restore_file.c_str(), F_OK) != 0 && restore_file == kKsmSaveFile) {
            std::fprintf(stderr, "hangar: no saved KSM settings (%s): nothing to restore\n", kKsmSaveFile);
            return kExitOk;
        }
        auto failures = KsmControl::restore_from_file(restore_file, kKsmSysfs, std::move(lock));
        for (const auto& e : failures) std::fprintf(stderr, "hangar: %s\n", e.c_str());
        if (failures.empty()) std::fprintf(stderr, "hangar: KSM settings restored from %s\n", restore_file.c_str());
        return failures.empty() ? kExitOk : kExitEnvironment;
    }
    return kExitUsage;
}
