#include "vm_process.h"

#include "safe_fs.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace hangar {

namespace {

std::string mib_arg(uint64_t bytes) { return std::to_string(bytes >> 20) + "M"; }

// The line of `text` that contains `needle`, trimmed, or "".
std::string line_with(const std::string& text, std::string_view needle) {
    size_t pos = text.find(needle);
    if (pos == std::string::npos) return "";
    size_t begin = text.rfind('\n', pos);
    begin = begin == std::string::npos ? 0 : begin + 1;
    size_t end = text.find('\n', pos);
    std::string line = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    return line;
}

std::string last_line(const std::string& text) {
    size_t end = text.find_last_not_of("\r\n ");
    if (end == std::string::npos) return "";
    size_t begin = text.rfind('\n', end);
    begin = begin == std::string::npos ? 0 : begin + 1;
    return text.substr(begin, end + 1 - begin);
}

}  // namespace

std::vector<std::string> build_qemu_argv(const VmSpec& vm, const LaunchPlan& plan) {
    std::vector<std::string> a = {plan.qemu, "-name", vm.name};
    std::string machine(to_string(vm.machine));
    // QEMU's own blind KSM (mem-merge) is on by default; other modes must switch it off.
    if (plan.ksm == KsmMode::Off || plan.ksm == KsmMode::Targeted) machine += ",mem-merge=off";
    // Several vCPUs under TCG: one host thread each (MTTCG), as they would run on KVM.
    const std::string accel = vm.vcpus > 1 && plan.accel == "tcg" ? "tcg,thread=multi" : plan.accel;
    a.insert(a.end(), {"-M", machine, "-accel", accel, "-m", mib_arg(vm.memory), "-smp", std::to_string(vm.vcpus),
                       "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                       // Start stopped: hangar connects QMP and sets up stats before the guest runs.
                       "-S", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"});
    if (plan.pass_fds) {
        // Descriptors hangar opened: QEMU never opens a path in the run directory.
        a.insert(a.end(), {"-add-fd", "fd=" + std::to_string(kSerialFd) + ",set=1", "-serial", "file:/dev/fdset/1",
                           "-chardev", "socket,id=qmp0,fd=" + std::to_string(kQmpFd) + ",server=on,wait=off", "-mon",
                           "chardev=qmp0,mode=control"});
    } else {
        a.insert(a.end(),
                 {"-serial", "file:" + plan.serial_log, "-qmp", "unix:" + plan.qmp_socket + ",server=on,wait=off"});
    }
    if (plan.sandbox) a.insert(a.end(), {"-sandbox", kSandboxArg});
    if (vm.machine != Machine::Microvm) a.insert(a.end(), {"-bios", "/usr/share/qemu/qboot.rom"});
    std::string cmdline = "app=" + vm.app;
    for (const auto& arg : vm.args) cmdline += " " + arg;
    a.insert(a.end(), {"-kernel", vm.kernel.empty() ? plan.kernel : vm.kernel, "-append", cmdline});
    if (vm.balloon) {
        std::string dev = vm.machine == Machine::Microvm ? "virtio-balloon-device" : "virtio-balloon-pci";
        dev += std::string(",id=") + kBalloonId;
        auto props = vm.balloon_props;
        if (plan.ksm == KsmMode::Targeted && plan.patched && !props.count("share-hints")) props["share-hints"] = "on";
        for (const auto& [k, v] : props) dev += "," + k + "=" + v;
        // The Blimp extensions need a modern transport; microvm's virtio-mmio is legacy unless told.
        const bool extensions = props.count("share-hints") || props.count("page-states");
        if (vm.machine == Machine::Microvm && plan.patched && extensions)
            a.insert(a.end(), {"-global", "virtio-mmio.force-legacy=false"});
        a.insert(a.end(), {"-device", dev});
    }
    a.insert(a.end(), vm.qemu_args.begin(), vm.qemu_args.end());
    return a;
}

bool VmExit::ok() const {
    return (kind == Kind::GuestExit && guest_status == 0) || kind == Kind::Stopped || kind == Kind::Detached ||
           kind == Kind::DomainEnded || (kind == Kind::QemuExit && exit_code == 0);
}

std::string_view VmExit::kind_name(Kind k) {
    switch (k) {
        case Kind::GuestExit: return "exited";
        case Kind::UnknownApp: return "unknown-app";
        case Kind::GuestFault: return "guest-fault";
        case Kind::QemuExit: return "qemu-exit";
        case Kind::QemuError: return "qemu-error";
        case Kind::Signaled: return "killed";
        case Kind::Stopped: return "stopped";
        case Kind::FailedToStart: return "failed-to-start";
        case Kind::Detached: return "detached";
        case Kind::DomainEnded: return "domain-ended";
        case Kind::AttachFailed: return "attach-failed";
        case Kind::HostLost: return "host-lost";
    }
    return "?";
}

std::string VmExit::describe() const {
    std::string s;
    switch (kind) {
        case Kind::GuestExit: s = "guest exited with status " + std::to_string(guest_status); break;
        case Kind::UnknownApp: s = "unknown app (guest exited with status 2)"; break;
        case Kind::GuestFault: s = "guest faulted or panicked (status 125)"; break;
        case Kind::QemuExit:
            s = exit_code == 0 ? "QEMU exited (guest powered off without a status)"
                               : "QEMU exited with " + std::to_string(exit_code);
            break;
        case Kind::QemuError: s = "QEMU failed with exit code " + std::to_string(exit_code); break;
        case Kind::Signaled:
            s = "QEMU was killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + "), not by hangar";
            break;
        case Kind::Stopped: s = "stopped by hangar"; break;
        case Kind::FailedToStart: s = "QEMU failed to start"; break;
        case Kind::Detached: s = "detached by hangar, the domain keeps running"; break;
        case Kind::DomainEnded: s = "the domain stopped outside hangar"; break;
        case Kind::AttachFailed: s = "could not attach to its libvirt domain"; break;
        case Kind::HostLost: s = "lost its libvirt host"; break;
    }
    if (!detail.empty()) s += ": " + detail;
    return s;
}

VmExit decode_exit(int ws, const std::string& serial, const std::string& qemu_log, bool stopping, bool guest_ran) {
    VmExit e;
    if (WIFSIGNALED(ws)) {
        e.signal = WTERMSIG(ws);
        e.kind =
            stopping && (e.signal == SIGKILL || e.signal == SIGTERM) ? VmExit::Kind::Stopped : VmExit::Kind::Signaled;
        return e;
    }
    e.exit_code = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
    const bool guest_evidence = guest_ran || serial.find_first_not_of(" \r\n") != std::string::npos;
    if (e.exit_code >= 0 && (e.exit_code & 1) && guest_evidence) {
        // isa-debug-exit: QEMU leaves with (status << 1) | 1.
        e.guest_status = e.exit_code >> 1;
        e.kind = VmExit::Kind::GuestExit;
        if (e.guest_status == 2) {
            std::string line = line_with(serial, "unknown app");
            if (!line.empty()) {
                e.kind = VmExit::Kind::UnknownApp;
                // The guest follows with the list of apps; the line up to there is the message.
                e.detail = line.substr(0, line.find(". Available"));
            }
        } else if (e.guest_status == 125) {
            e.kind = VmExit::Kind::GuestFault;
            for (auto needle : {"CPU exception", "panic", "PANIC"}) {
                e.detail = line_with(serial, needle);
                if (!e.detail.empty()) break;
            }
        }
        return e;
    }
    if (e.exit_code == 0) {
        e.kind = stopping ? VmExit::Kind::Stopped : VmExit::Kind::QemuExit;
        // QEMU turns SIGTERM/SIGINT/SIGHUP into a clean exit 0, but says so on stderr: a signal
        // from someone other than hangar is not a guest powering off.
        const std::string line = line_with(qemu_log, "terminating on signal");
        if (!stopping && !line.empty()) {
            e.kind = VmExit::Kind::Signaled;
            e.signal = std::atoi(line.c_str() + line.find("terminating on signal") + 22);
            e.detail = line;
        }
        return e;
    }
    e.kind = VmExit::Kind::QemuError;
    e.detail = last_line(qemu_log);
    if (e.detail.empty() && !guest_evidence) e.detail = "QEMU exited before the guest ran";
    return e;
}

VmProcess::~VmProcess() {
    // Never leave a QEMU behind, whatever path brought us here.
    if (running()) {
        ::kill(pid_, SIGKILL);
        int ws;
        waitpid(pid_, &ws, 0);
    }
}

ErrorOr<void> VmProcess::spawn(const std::vector<std::string>& argv, const std::string& log_path,
                               const SpawnOptions& options) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return Error{std::string("pipe: ") + std::strerror(errno)};
    int log = open_nofollow(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log < 0) {
        Error error{"cannot create " + log_path + ": " + std::strerror(errno)};
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        return error;
    }
    std::vector<char*> cargv;
    for (const auto& s : argv) cargv.push_back(const_cast<char*>(s.c_str()));
    cargv.push_back(nullptr);
    const pid_t parent = getpid();

    pid_t pid = fork();
    if (pid < 0) {
        Error error{std::string("fork: ") + std::strerror(errno)};
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        ::close(log);
        return error;
    }
    if (pid == 0) {
        // Only async-signal-safe calls from here to exec. A failure is reported through the pipe.
        int errfd = pipefd[1];
        auto fail = [&](int e) {
            ssize_t ignored = write(errfd, &e, sizeof e);
            (void)ignored;
            _exit(127);
        };
        // Our own descriptors above every number a handed-over one may take.
        if (!options.fds.empty()) {
            int e2 = fcntl(errfd, F_DUPFD_CLOEXEC, 64);
            if (e2 >= 0) errfd = e2;
            if ((log = fcntl(log, F_DUPFD_CLOEXEC, 64)) < 0) fail(errno);
        }
        // Own process group: a terminal ^C reaches hangar only, which then stops VMs in order.
        setpgid(0, 0);
        // Handed-over descriptors at their agreed numbers: first out of the way (a source may sit
        // on a target number), then into place; dup2 leaves the copies inheritable.
        int moved[8];
        const size_t nfd = options.fds.size() < 8 ? options.fds.size() : 8;
        for (size_t i = 0; i < nfd; ++i)
            if ((moved[i] = fcntl(options.fds[i].second, F_DUPFD_CLOEXEC, 64)) < 0) fail(errno);
        for (size_t i = 0; i < nfd; ++i)
            if (dup2(moved[i], options.fds[i].first) < 0) fail(errno);
        umask(077);
        if (options.uid) {
            // Unprivileged from the first instruction of QEMU: supplementary groups (e.g. kvm),
            // group, then user; the sandbox may then forbid set*id altogether.
            if (setgroups(options.groups.size(), options.groups.data()) != 0) fail(errno);
            if (setgid(options.gid) != 0 || setuid(*options.uid) != 0) fail(errno);
            if (setuid(0) == 0) fail(EPERM);  // must not be able to get root back
        }
        // If hangar dies without cleaning up (SIGKILL), its QEMUs die with it. Set after the
        // credential change, which clears it.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE}) ::signal(s, SIG_DFL);
        int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(log, 1);
        dup2(log, 2);
        if (argv[0].find('/') != std::string::npos)
            execv(cargv[0], cargv.data());
        else
            execvp(cargv[0], cargv.data());
        fail(errno);
    }
    ::close(pipefd[1]);
    ::close(log);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    ::close(pipefd[0]);
    pid_ = pid;
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        int ws;
        waitpid(pid, &ws, 0);
        reaped_ = true;
        wait_status_ = ws;
        return Error{"cannot execute " + argv[0] + ": " + std::strerror(child_errno)};
    }
    return {};
}

bool VmProcess::try_reap() {
    if (pid_ <= 0 || reaped_) return reaped_;
    int ws;
    pid_t r = waitpid(pid_, &ws, WNOHANG);
    if (r == pid_) {
        reaped_ = true;
        wait_status_ = ws;
    }
    return reaped_;
}

void VmProcess::signal(int sig) {
    if (running()) ::kill(pid_, sig);
}

std::optional<uint64_t> read_rss(pid_t pid, const std::string& proc_root) {
    std::ifstream in(proc_root + "/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            std::istringstream ss(line.substr(6));
            uint64_t kib = 0;
            if (ss >> kib) return kib * 1024;
        }
    }
    return std::nullopt;
}

std::optional<double> read_cpu_seconds(pid_t pid, const std::string& proc_root) {
    std::ifstream in(proc_root + "/" + std::to_string(pid) + "/stat");
    std::string stat;
    if (!std::getline(in, stat)) return std::nullopt;
    // The command name may hold spaces and parentheses: fields are counted after the last ")".
    // State is field 3, utime 14, stime 15 (proc(5)).
    auto rp = stat.rfind(')');
    if (rp == std::string::npos || rp + 2 > stat.size()) return std::nullopt;
    std::istringstream ss(stat.substr(rp + 2));
    std::string field;
    std::optional<uint64_t> utime, stime;
    for (int i = 3; i <= 15 && (ss >> field); ++i) {
        if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
        if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
    }
    if (!utime || !stime) return std::nullopt;
    long hz = sysconf(_SC_CLK_TCK);
    return static_cast<double>(*utime + *stime) / static_cast<double>(hz > 0 ? hz : 100);
}

std::optional<uint64_t> read_ksm_merging_pages(pid_t pid, const std::string& proc_root) {
    std::ifstream in(proc_root + "/" + std::to_string(pid) + "/ksm_merging_pages");
    uint64_t v;
    if (in >> v) return v;
    return std::nullopt;
}

std::string read_file_tail(const std::string& path, size_t max_bytes) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return "";
    auto size = static_cast<size_t>(in.tellg());
    size_t start = size > max_bytes ? size - max_bytes : 0;
    in.seekg(static_cast<std::streamoff>(start));
    std::string out(size - start, '\0');
    in.read(out.data(), static_cast<std::streamsize>(out.size()));
    return out;
}

}  // namespace hangar
