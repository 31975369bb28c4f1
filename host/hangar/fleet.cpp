// The fleet's lifecycle: launch each VM, connect to its QMP, stop and reap it, and run the loop
// until every VM has ended. The periodic jobs live beside it (fleet.h says which file has which).
#include "fleet.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>

#include "fleet_vm.h"
#include "safe_fs.h"

namespace hangar {

using namespace std::chrono_literals;

namespace {

// Starts QEMU. With pass_fds, hangar makes the QMP socket (0600 in the 0700 run directory) and
// the serial log, and QEMU gets the descriptors: it needs no access to the run directory at all.
ErrorOr<void> spawn_qemu(VmProcess& proc, const std::vector<std::string>& argv, const std::string& qemu_log,
                         const std::string& qmp_path, const std::string& serial_log, const LaunchPlan& plan) {
    SpawnOptions opts;
    opts.uid = plan.uid;
    opts.gid = plan.gid;
    opts.groups = plan.groups;
    if (!plan.pass_fds) return proc.spawn(argv, qemu_log, opts);
    const int qmp_listen = TRY(listen_unix(qmp_path));
    const int serial = open_nofollow(serial_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (serial < 0) {
        Error error{"cannot create " + serial_log + ": " + std::strerror(errno)};
        ::close(qmp_listen);
        return error;
    }
    opts.fds = {{kQmpFd, qmp_listen}, {kSerialFd, serial}};
    auto spawned = proc.spawn(argv, qemu_log, opts);
    ::close(qmp_listen);
    ::close(serial);
    return spawned;
}

}  // namespace

Fleet::Fleet(Config config, LaunchPlan plan, std::string run_dir, KsmControl* ksm)
    : cfg_(std::move(config)),
      plan_(std::move(plan)),
      run_dir_(std::move(run_dir)),
      ksm_(ksm),
      policy_(make_policy(cfg_.policy)),
      metrics_(ksm),
      view_(StatusView::choose(cfg_.status, STDOUT_FILENO), stdout) {
    for (const auto& spec : cfg_.vms) {
        auto vm = std::make_unique<Vm>();
        vm->spec = spec;
        vm->qmp_path = run_dir_ + "/" + spec.name + ".qmp";
        vm->serial_log = run_dir_ + "/" + spec.name + ".serial.log";
        vm->qemu_log = run_dir_ + "/" + spec.name + ".qemu.log";
        vms_.push_back(std::move(vm));
    }
}

Fleet::~Fleet() {
    kill_all();
    if (signal_fd_ >= 0) ::close(signal_fd_);
}

double Fleet::now_s() const { return std::chrono::duration<double>(Clock::now() - started_).count(); }

void Fleet::report(const std::string& line) { view_.message("hangar: " + line); }

void Fleet::launch(Vm& vm) {
    if (vm.on_libvirt()) return attach(vm);
    LaunchPlan plan = plan_;
    plan.qmp_socket = vm.qmp_path;
    plan.serial_log = vm.serial_log;
    auto argv = build_qemu_argv(vm.spec, plan);
    {
        std::string text;
        for (const auto& a : argv) text += a + "\n";
        auto written = write_file_atomic(run_dir_ + "/" + vm.spec.name + ".cmdline", text, 0644);
        if (written.is_error()) report(written.error().message);
    }
    ::unlink(vm.qmp_path.c_str());
    auto spawned = spawn_qemu(vm.proc, argv, vm.qemu_log, vm.qmp_path, vm.serial_log, plan);
    if (spawned.is_error()) return end_vm(vm, VmExit::Kind::FailedToStart, spawned.error().message);
    vm.phase = Vm::Phase::Connecting;
    vm.connect_deadline = Clock::now() + cfg_.qmp_timeout;
    report("vm " + vm.spec.name + ": started QEMU pid " + std::to_string(vm.proc.pid()) + " (app=" + vm.spec.app +
           ", " + format_size(vm.spec.memory) + ", " + std::string(to_string(vm.spec.machine)) +
           (plan.user.empty() ? "" : ", as " + plan.user) + (plan.sandbox ? ", sandboxed" : "") + ")");
    try_connect(vm);
}

void Fleet::try_connect(Vm& vm) {
    if (vm.phase != Vm::Phase::Connecting || vm.stopping) return;
    int fd = connect_unix(vm.qmp_path);
    if (fd < 0) {
        const int e = errno;
        const bool not_yet = e == ENOENT || e == ECONNREFUSED || e == EAGAIN;
        if (!not_yet || Clock::now() >= vm.connect_deadline) {
            qmp_problem(vm, not_yet ? "QMP socket " + vm.qmp_path + " did not accept connections in time"
                                    : "cannot connect to " + vm.qmp_path + ": " + std::strerror(e));
            vm.lost_qmp = true;
            vm.stopping = true;
            vm.proc.signal(SIGKILL);
            return;
        }
        Vm* p = &vm;
        loop_.after(50ms, [this, p] { try_connect(*p); });
        return;
    }
    Vm* p = &vm;
    QmpClient::Callbacks cb;
    cb.on_ready = [this, p] { on_qmp_ready(*p); };
    cb.on_event = [p](const std::string& event, const json& data) {
        if (event == "BALLOON_CHANGE" && data.is_object() && data.contains("actual") &&
            data["actual"].is_number_unsigned())
            p->actual = data["actual"].get<uint64_t>();
    };
    cb.on_closed = [this, p](const std::string& why) { on_qmp_closed(*p, why); };
    vm.qmp = std::make_unique<QmpClient>(cb, cfg_.qmp_timeout);
    vm.qmp->attach(fd);
    vm.watched_fd = fd;
    loop_.watch(fd, EPOLLIN, [this, p](uint32_t events) {
        if (!p->qmp) return;
        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) p->qmp->handle_readable();
        if (p->qmp && (events & EPOLLOUT)) p->qmp->handle_writable();
        sync_watch(*p);
    });
    sync_watch(vm);
}

void Fleet::sync_watch(Vm& vm) {
    if (vm.watched_fd < 0 || !vm.qmp) return;
    if (vm.qmp->state() == QmpClient::State::Closed) return;
    loop_.modify(vm.watched_fd, EPOLLIN | (vm.qmp->wants_write() ? EPOLLOUT : 0u));
}

void Fleet::qmp_problem(Vm& vm, const std::string& what) {
    vm.qmp_errors.push_back(what);
    report("vm " + vm.spec.name + ": QMP: " + what);
}

void Fleet::on_qmp_ready(Vm& vm) {
    vm.phase = Vm::Phase::Ready;
    Vm* p = &vm;
    if (vm.spec.balloon) {
        vm.qmp->execute(
            "qom-set",
            {{"path", kBalloonPath}, {"property", "guest-stats-polling-interval"}, {"value", cfg_.stats_interval_s}},
            [this, p](const QmpReply& r) {
                if (!r.ok && r.error_class != "Disconnected")
                    qmp_problem(*p, "enabling guest stats failed: " + r.describe());
            });
        vm.qmp->execute("query-balloon", [p](const QmpReply& r) {
            if (r.ok && r.value.contains("actual") && r.value["actual"].is_number_unsigned())
                p->actual = r.value["actual"].get<uint64_t>();
        });
        // hangar owns the balloon from the start: an explicit target of the full size changes
        // nothing for the guest but makes the target known, and the config-change interrupt it
        // raises is what gets some guests to send their first stats buffer.
        vm.qmp->execute("balloon", {{"value", vm.spec.memory}}, [this, p](const QmpReply& r) {
            if (r.ok)
                p->target = p->spec.memory;
            else if (r.error_class != "Disconnected")
                qmp_problem(*p, "balloon failed: " + r.describe());
        });
    }
    if (targeting_ && vm.spec.balloon) {
        // Nothing is mergeable until hangar knows the twins: without a filter QEMU marks every hint
        // the guest sends, and narrowing that later would unmerge (copy) whatever KSM had merged.
        vm.filter_sent.reset();
        vm.qmp->execute(
            "x-blimp-balloon-hint-filter", hint_filter_args(std::set<uint64_t>{}), [this, p](const QmpReply& r) {
                if (r.ok) {
                    if (!p->filter_sent) p->filter_sent = std::set<uint64_t>{};
                    return;
                }
                if (r.error_class == "Disconnected") return;
                p->hints_off = true;
                qmp_problem(*p, "x-blimp-balloon-hint-filter failed, not targeting KSM for this VM: " + r.describe());
            });
    }
    if (vm.spec.start == StartMode::Running) {
        vm.qmp->execute("cont", [this, p](const QmpReply& r) {
            if (r.ok)
                p->resumed = true;
            else if (r.error_class != "Disconnected")
                qmp_problem(*p, "cont failed: " + r.describe());
        });
    } else {
        report("vm " + vm.spec.name + ": left paused (start=paused)");
    }
    if (stopping_) {
        vm.stopping = true;
        vm.qmp->execute("quit", [](const QmpReply&) {});
    }
    sync_watch(vm);
}

void Fleet::on_qmp_closed(Vm& vm, const std::string& why) {
    if (vm.watched_fd >= 0) {
        loop_.unwatch(vm.watched_fd);
        vm.watched_fd = -1;
    }
    if (vm.phase == Vm::Phase::Gone || vm.stopping) return;
    // A closure hangar decided on (protocol error, failed write) is news whatever happens next.
    const bool eof = why.rfind("QMP connection closed by QEMU", 0) == 0;
    if (!eof) qmp_problem(vm, why);
    // QEMU closes QMP as it exits; give SIGCHLD a moment to explain the closure before treating
    // it as a broken management channel.
    Vm* p = &vm;
    loop_.after(1s, [this, p, why, eof] {
        if (p->phase == Vm::Phase::Gone || p->stopping || !p->proc.running()) return;
        qmp_problem(*p, (eof ? why + "; s" : std::string("S")) + "topping the VM (it cannot be managed without QMP)");
        p->lost_qmp = true;
        p->stopping = true;
        p->proc.signal(SIGTERM);
        loop_.after(cfg_.grace, [p] { p->proc.signal(SIGKILL); });
    });
}

void Fleet::end_vm(Vm& vm, VmExit::Kind kind, const std::string& detail) {
    VmExit e;
    e.kind = kind;
    e.detail = detail;
    vm.exit = e;
    vm.phase = Vm::Phase::Gone;
    report("vm " + vm.spec.name + ": " + e.describe());
}

void Fleet::reap_all() {
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.proc.running()) continue;
        if (vm.proc.try_reap()) finish_vm(vm);
    }
}

void Fleet::finish_vm(Vm& vm) {
    vm.phase = Vm::Phase::Gone;
    VmExit e = decode_exit(vm.proc.wait_status(), read_file_tail(vm.serial_log, 1 << 16),
                           read_file_tail(vm.qemu_log, 1 << 14), vm.stopping, vm.resumed);
    if (vm.lost_qmp && (e.kind == VmExit::Kind::Stopped || e.ok())) {
        e.kind = VmExit::Kind::QemuError;
        e.detail = "stopped after its QMP connection failed";
    }
    vm.exit = e;
    if (vm.qmp) vm.qmp->close("QEMU exited");
    sharing_.forget(vm.spec.name);
    // Its hashes no longer count as twins for the others.
    if (targeting_ && !stopping_) hints_settled();
    report("vm " + vm.spec.name + ": " + e.describe());
    if (!e.ok() && (e.kind == VmExit::Kind::QemuError || e.kind == VmExit::Kind::FailedToStart)) {
        std::string log = read_file_tail(vm.qemu_log, 2048);
        if (!log.empty())
            report("vm " + vm.spec.name + ": QEMU said: " + log.substr(0, log.find_last_not_of("\n") + 1));
    }
}

void Fleet::stop_all(const std::string& why) {
    if (stopping_) return;
    stopping_ = true;
    stop_reason_ = why;
    report("stopping all VMs: " + why);
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.on_libvirt()) {
            detach(vm, why);
            continue;
        }
        if (!vm.proc.running()) continue;
        vm.stopping = true;
        Vm* p = &vm;
        if (vm.qmp_up()) {
            vm.qmp->execute("quit", [p](const QmpReply& r) {
                if (!r.ok && r.error_class != "Disconnected") p->proc.signal(SIGTERM);
            });
            sync_watch(vm);
        } else {
            vm.proc.signal(SIGTERM);
        }
    }
    loop_.after(cfg_.grace, [this] {
        for (auto& up : vms_) {
            if (up->proc.running()) {
                report("vm " + up->spec.name + ": still running after " + std::to_string(cfg_.grace.count()) +
                       " ms, SIGKILL");
                up->proc.signal(SIGKILL);
            }
        }
    });
}

void Fleet::kill_all() {
    for (auto& up : vms_) {
        if (up->proc.running()) {
            up->stopping = true;
            up->proc.signal(SIGKILL);
        }
    }
}

void Fleet::handle_signals() {
    signalfd_siginfo si;
    while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        const int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) continue;  // reaped below
        if (!stopping_) {
            interrupted_by_ = sig;
            stop_all(std::string("received SIG") + sigabbrev_np(sig));
        } else {
            report(std::string("received SIG") + sigabbrev_np(sig) + " again: killing every VM now");
            kill_all();
        }
    }
    reap_all();
}

bool Fleet::any_running() const {
    return std::any_of(vms_.begin(), vms_.end(), [](const auto& vm) { return vm->live(); });
}

int Fleet::run() {
    started_ = Clock::now();
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGQUIT);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal_fd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (signal_fd_ < 0) {
        report(std::string("signalfd: ") + std::strerror(errno));
        env_error_ = true;
        return exit_status();
    }
    loop_.watch(signal_fd_, EPOLLIN, [this](uint32_t) { handle_signals(); });

    if (!cfg_.csv.empty()) {
        if (auto opened = metrics_.open_csv(cfg_.csv); opened.is_error()) {
            report(opened.error().message);
            env_error_ = true;
            return exit_status();
        }
    }
    ksm_lock_ = ksm_ && ksm_->lock_held() ? ksm_->lock_path() : "";
    // Before any VM exists: each gets its empty hint filter when its QMP is ready.
    targeting_ = cfg_.ksm.mode == KsmMode::Targeted && plan_.patched;
    for (auto& vm : vms_) launch(*vm);
    if (cfg_.duration) loop_.after(*cfg_.duration, [this] { stop_all("duration reached"); });
    std::function<void()> hint_tick = [&] {
        refresh_hints();
        hint_timer_ = loop_.after(cfg_.ksm.hint_refresh, hint_tick);
    };
    if (targeting_) hint_timer_ = loop_.after(cfg_.ksm.hint_refresh, hint_tick);
    for (auto& vm : vms_) {
        auto it = vm->spec.balloon_props.find("page-states");
        vm->sweeps = plan_.patched && vm->spec.balloon && it != vm->spec.balloon_props.end() && it->second == "on";
        // Only a QEMU with page states can answer; whether its guest publishes ages is in the answer.
        vm->ages_query = vm->sweeps;
    }
    std::function<void()> sweep_tick = [&] {
        sweep_page_states();
        sweep_timer_ = loop_.after(cfg_.policy.sweep, sweep_tick);
    };
    if (cfg_.policy.sweep.count() > 0) sweep_timer_ = loop_.after(cfg_.policy.sweep, sweep_tick);

    std::function<void()> tick = [&] {
        sample();
        sample_timer_ = loop_.after(cfg_.interval, tick);
    };
    sample_timer_ = loop_.after(std::min<Clock::duration>(cfg_.interval, 500ms), tick);

    while (any_running()) {
        loop_.run_once(250ms);
        // SIGCHLD is the normal path; this catches a child reaped between signal reads.
        reap_all();
        const auto now = Clock::now();
        for (auto& up : vms_) {
            if (up->qmp) {
                up->qmp->check_timeouts(now);
                sync_watch(*up);
            }
        }
    }
    loop_.cancel(sample_timer_);
    loop_.cancel(hint_timer_);
    loop_.cancel(sweep_timer_);
    // A last row per VM, so the CSV ends with the final state.
    sample();
    if (ksm_) {
        ksm_restore_errors_ = ksm_->restore();
        for (const auto& e : ksm_restore_errors_) report("KSM restore failed: " + e);
        if (!ksm_restore_errors_.empty()) env_error_ = true;
    }
    if (!cfg_.plot.empty() && !cfg_.csv.empty()) {
        // Every VM in one plot; across hosts also one per host, with that host's budget (a sum
        // of RSS over machines says nothing about any of them).
        auto plot = [&](const std::string& png, const std::string& host, const std::vector<FleetPoint>& points,
                        std::optional<uint64_t> budget) {
            std::vector<std::string> names;
            for (const auto& vm : vms_)
                if (host.empty() || vm->host() == host) names.push_back(vm->spec.name);
            auto plotted = write_plot(cfg_.csv, png, names, points, budget);
            if (plotted.is_error())
                report("plot not written: " + plotted.error().message);
            else
                report("plot written to " + png);
        };
        if (cfg_.hosts.empty()) {
            plot(cfg_.plot, "", metrics_.fleet(), cfg_.budget);
        } else {
            plot(cfg_.plot, "", {}, std::nullopt);
            for (const auto& [host, points] : metrics_.host_fleet())
                plot(host_plot_path(cfg_.plot, host), host, points, host_budget(host));
        }
    }
    int status = exit_status();
    write_summary(status);
    return status;
}

std::optional<uint64_t> Fleet::host_budget(const std::string& host) const {
    if (host == kLocalHost) return cfg_.budget;
    for (const auto& h : cfg_.hosts)
        if (h.name == host) return h.budget;
    return std::nullopt;
}

std::string host_plot_path(const std::string& png, const std::string& host) {
    const auto slash = png.rfind('/');
    const auto dot = png.rfind('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return png + "." + host;
    return png.substr(0, dot) + "." + host + png.substr(dot);
}

int Fleet::exit_status() const {
    if (env_error_) return kExitEnvironment;
    bool failed = false, qmp_errors = false;
    for (const auto& vm : vms_) {
        if (vm->exit && !vm->exit->ok()) failed = true;
        if (!vm->qmp_errors.empty()) qmp_errors = true;
    }
    if (failed) return kExitVmFailed;
    if (interrupted_by_) return 128 + interrupted_by_;
    if (qmp_errors) return kExitQmpErrors;
    return kExitOk;
}

}  // namespace hangar
