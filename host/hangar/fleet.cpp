#include "fleet.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "safe_fs.h"

namespace hangar {

using namespace std::chrono_literals;

struct Fleet::Vm {
    VmSpec spec;
    VmProcess proc;
    std::unique_ptr<QmpClient> qmp;
    enum class Phase { Launching, Connecting, Ready, Gone } phase = Phase::Launching;
    std::string qmp_path, serial_log, qemu_log;
    Clock::time_point connect_deadline{};
    int watched_fd = -1;
    bool stopping = false;       // hangar asked it to stop
    bool lost_qmp = false;       // hangar gave up on it after its QMP connection broke
    bool resumed = false;        // "cont" succeeded: the guest has run
    std::optional<uint64_t> actual, target;
    std::optional<GuestStats> stats, prev_stats;
    Clock::time_point stats_seen{};
    uint64_t stats_update = 0;
    std::optional<VmExit> exit;
    std::vector<std::string> qmp_errors;
    std::string last_decision;
    // Sharing (targeted KSM)
    bool hints_busy = false;
    bool hints_off = false;   // this QEMU cannot do it; said once
    bool hints_read = false;  // its hints have been read into the index at least once
    std::vector<Hint> hints_accum;
    std::optional<std::set<uint64_t>> filter_sent;
    uint64_t hint_pages = 0;  // as last read, kept for the summary after the VM is gone
    std::optional<uint64_t> marked_pages, marked_runs;  // QEMU's answer to the last filter
    // Page-state sweeps
    bool sweeps = false;      // page-states=on on the patched QEMU
    bool sweep_busy = false;
    uint64_t swept_pages = 0;
};

std::optional<GuestStats> guest_stats_from_qom(const json& v) {
    if (!v.is_object()) return std::nullopt;
    auto st = v.find("stats");
    auto lu = v.find("last-update");
    if (st == v.end() || !st->is_object() || lu == v.end() || !lu->is_number_unsigned()) return std::nullopt;
    GuestStats g;
    g.last_update = lu->get<uint64_t>();
    if (g.last_update == 0) return std::nullopt;
    auto get = [&](const char* key) -> std::optional<uint64_t> {
        auto it = st->find(key);
        if (it == st->end() || !it->is_number_unsigned()) return std::nullopt;
        uint64_t n = it->get<uint64_t>();
        if (n == UINT64_MAX) return std::nullopt;  // QEMU's "never reported"
        return n;
    };
    g.free_memory = get("stat-free-memory");
    g.available_memory = get("stat-available-memory");
    g.total_memory = get("stat-total-memory");
    g.disk_caches = get("stat-disk-caches");
    g.major_faults = get("stat-major-faults");
    g.minor_faults = get("stat-minor-faults");
    g.swap_in = get("stat-swap-in");
    g.swap_out = get("stat-swap-out");
    g.htlb_pgalloc = get("stat-htlb-pgalloc");
    g.htlb_pgfail = get("stat-htlb-pgfail");
    g.oom_kills = get("stat-oom-kills");  // these three need Blimp patch 4
    g.alloc_stalls = get("stat-alloc-stalls");
    g.direct_reclaims = get("stat-direct-reclaims");
    return g;
}

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

double Fleet::now_s() const {
    return std::chrono::duration<double>(Clock::now() - started_).count();
}

void Fleet::report(const std::string& line) {
    view_.message("hangar: " + line);
}

void Fleet::launch(Vm& vm) {
    LaunchPlan plan = plan_;
    plan.qmp_socket = vm.qmp_path;
    plan.serial_log = vm.serial_log;
    auto argv = build_qemu_argv(vm.spec, plan);
    {
        std::string text, error;
        for (const auto& a : argv) text += a + "\n";
        if (!write_file_atomic(run_dir_ + "/" + vm.spec.name + ".cmdline", text, 0644, error)) report(error);
    }
    ::unlink(vm.qmp_path.c_str());
    std::string error;
    SpawnOptions opts;
    opts.uid = plan.uid;
    opts.gid = plan.gid;
    opts.groups = plan.groups;
    int qmp_listen = -1, serial = -1;
    if (plan.pass_fds) {
        // hangar makes the QMP socket (0600 in the 0700 run directory) and the serial log, and
        // QEMU gets the descriptors: it needs no access to the run directory at all.
        qmp_listen = listen_unix(vm.qmp_path, error);
        serial = qmp_listen < 0 ? -1 : open_nofollow(vm.serial_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (qmp_listen >= 0 && serial < 0) error = "cannot create " + vm.serial_log + ": " + std::strerror(errno);
        opts.fds = {{kQmpFd, qmp_listen}, {kSerialFd, serial}};
    }
    const bool spawned = error.empty() && vm.proc.spawn(argv, vm.qemu_log, error, opts);
    if (qmp_listen >= 0) ::close(qmp_listen);
    if (serial >= 0) ::close(serial);
    if (!spawned) {
        VmExit e;
        e.kind = VmExit::Kind::FailedToStart;
        e.detail = error;
        vm.exit = e;
        vm.phase = Vm::Phase::Gone;
        report("vm " + vm.spec.name + ": " + e.describe());
        return;
    }
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
        if (event == "BALLOON_CHANGE" && data.is_object() && data.contains("actual") && data["actual"].is_number_unsigned())
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
        vm.qmp->execute("qom-set",
                        {{"path", kBalloonPath}, {"property", "guest-stats-polling-interval"},
                         {"value", cfg_.stats_interval_s}},
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
            if (r.ok) p->target = p->spec.memory;
            else if (r.error_class != "Disconnected") qmp_problem(*p, "balloon failed: " + r.describe());
        });
    }
    if (targeting_ && vm.spec.balloon) {
        // Nothing is mergeable until hangar knows the twins: without a filter QEMU marks every hint
        // the guest sends, and narrowing that later would unmerge (copy) whatever KSM had merged.
        vm.filter_sent.reset();
        vm.qmp->execute("x-blimp-balloon-hint-filter", hint_filter_args(std::set<uint64_t>{}),
                        [this, p](const QmpReply& r) {
                            if (r.ok) {
                                if (!p->filter_sent) p->filter_sent = std::set<uint64_t>{};
                                return;
                            }
                            if (r.error_class == "Disconnected") return;
                            p->hints_off = true;
                            qmp_problem(*p, "x-blimp-balloon-hint-filter failed, not targeting KSM for this VM: " +
                                                r.describe());
                        });
    }
    if (vm.spec.start == StartMode::Running) {
        vm.qmp->execute("cont", [this, p](const QmpReply& r) {
            if (r.ok) p->resumed = true;
            else if (r.error_class != "Disconnected") qmp_problem(*p, "cont failed: " + r.describe());
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
        if (!log.empty()) report("vm " + vm.spec.name + ": QEMU said: " + log.substr(0, log.find_last_not_of("\n") + 1));
    }
}

void Fleet::poll_guest_stats(Vm& vm) {
    Vm* p = &vm;
    vm.qmp->execute("query-balloon", [this, p](const QmpReply& r) {
        if (r.ok && r.value.contains("actual") && r.value["actual"].is_number_unsigned())
            p->actual = r.value["actual"].get<uint64_t>();
        else if (!r.ok && r.error_class != "Disconnected" && p->qmp_errors.size() < 20)
            qmp_problem(*p, "query-balloon failed: " + r.describe());
    });
    vm.qmp->execute("qom-get", {{"path", kBalloonPath}, {"property", "guest-stats"}}, [this, p](const QmpReply& r) {
        if (!r.ok) {
            if (r.error_class != "Disconnected" && p->qmp_errors.size() < 20)
                qmp_problem(*p, "reading guest stats failed: " + r.describe());
            return;
        }
        auto g = guest_stats_from_qom(r.value);
        if (g && g->last_update != p->stats_update) {
            p->prev_stats = p->stats;
            p->stats = g;
            p->stats_update = g->last_update;
            p->stats_seen = Clock::now();
        }
    });
}

void Fleet::sample() {
    std::vector<VmSample> samples;
    const auto now = Clock::now();
    // Stats the guest stopped refreshing are no basis for squeezing it.
    const auto stale_after = std::max<Clock::duration>(5s, std::chrono::seconds(3 * cfg_.stats_interval_s) + cfg_.interval);
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase == Vm::Phase::Gone) continue;
        if (vm.stats && now - vm.stats_seen > stale_after) {
            vm.stats.reset();
            vm.prev_stats.reset();
        }
        VmSample s;
        s.vm = vm.spec.name;
        s.pid = vm.proc.pid();
        s.memory = vm.spec.memory;
        s.state = vm.stopping ? "stopping"
                  : vm.phase == Vm::Phase::Ready ? (vm.spec.start == StartMode::Paused ? "paused" : "running")
                                                 : "starting";
        s.balloon_actual = vm.actual;
        s.balloon_target = vm.target;
        s.stats = vm.stats;
        if (vm.sweeps) s.pstate_discarded = vm.swept_pages;
        if (targeting_ && !vm.hints_off) {
            s.hint_pages = sharing_.hinted_pages(vm.spec.name);
            s.twin_hashes = vm.filter_sent ? vm.filter_sent->size() : 0;
        }
        samples.push_back(std::move(s));
        if (vm.phase == Vm::Phase::Ready && vm.spec.balloon && vm.qmp && vm.qmp->state() == QmpClient::State::Ready &&
            !vm.stopping) {
            poll_guest_stats(vm);
            sync_watch(vm);
        }
    }
    metrics_.record(now_s(), samples);
    std::vector<std::string> lines;
    for (const auto& s : samples) lines.push_back(StatusView::format_line(s));
    if (!lines.empty()) view_.show(lines);
    if (!stopping_) apply_policy();
}

void Fleet::apply_policy() {
    std::vector<VmObservation> obs;
    std::vector<Vm*> who;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase != Vm::Phase::Ready || !vm.spec.balloon || vm.stopping || vm.spec.start == StartMode::Paused)
            continue;
        VmObservation o;
        o.name = vm.spec.name;
        o.memory = vm.spec.memory;
        o.min_memory = vm.spec.min_memory;
        o.shares = vm.spec.shares;
        o.actual = vm.actual;
        o.target = vm.target;
        o.stats = vm.stats;
        o.previous = vm.prev_stats;
        obs.push_back(std::move(o));
        who.push_back(&vm);
    }
    if (obs.empty()) return;
    // The budget covers every VM still holding memory, including those the policy cannot move.
    std::optional<uint64_t> budget = cfg_.budget;
    if (budget) {
        for (auto& up : vms_) {
            Vm& vm = *up;
            if (vm.phase == Vm::Phase::Gone || std::find(who.begin(), who.end(), &vm) != who.end()) continue;
            *budget -= std::min(*budget, vm.spec.memory);
        }
    }
    auto decisions = policy_->decide(obs, budget);
    for (size_t i = 0; i < decisions.size() && i < who.size(); ++i) {
        const auto& d = decisions[i];
        Vm* p = who[i];
        if (!d.target) continue;
        const uint64_t target = *d.target;
        const std::string line = "balloon " + format_size(target) + " (" + d.reason + ")";
        if (line != p->last_decision) {
            report("vm " + p->spec.name + ": " + line);
            p->last_decision = line;
        }
        p->target = target;
        p->qmp->execute("balloon", {{"value", target}}, [this, p](const QmpReply& r) {
            if (!r.ok && r.error_class != "Disconnected") qmp_problem(*p, "balloon failed: " + r.describe());
        });
        sync_watch(*p);
    }
}

void Fleet::sweep_page_states() {
    if (stopping_) return;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.sweeps || vm.sweep_busy || vm.phase != Vm::Phase::Ready || vm.stopping || !vm.qmp ||
            vm.qmp->state() != QmpClient::State::Ready)
            continue;
        Vm* p = &vm;
        vm.sweep_busy = true;
        // The protocol makes a sweep safe at any time: QEMU claims only pages the guest marked
        // unused or volatile, by compare-and-swap (docs/spec-virtio-balloon-blimp.md, section 4).
        vm.qmp->execute("x-blimp-balloon-discard", json::object(), [this, p](const QmpReply& r) {
            p->sweep_busy = false;
            if (r.ok) {
                for (const char* k : {"discarded-unused", "discarded-volatile"})
                    if (r.value.contains(k) && r.value[k].is_number_unsigned()) p->swept_pages += r.value[k].get<uint64_t>();
                return;
            }
            if (r.error_class == "Disconnected") return;
            p->sweeps = false;  // said once; QEMU's own timer (if any) still runs
            qmp_problem(*p, "page-state sweep failed, not sweeping this VM again: " + r.describe());
        });
        sync_watch(vm);
    }
}

void Fleet::refresh_hints() {
    if (stopping_) return;
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase != Vm::Phase::Ready || vm.hints_off || vm.hints_busy || vm.stopping || !vm.spec.balloon) continue;
        if (!vm.qmp || vm.qmp->state() != QmpClient::State::Ready) continue;
        vm.hints_busy = true;
        vm.hints_accum.clear();
        fetch_hints(vm, 0);
    }
}

void Fleet::fetch_hints(Vm& vm, uint64_t start) {
    Vm* p = &vm;
    vm.qmp->execute("x-blimp-balloon-query-hints", query_hints_args(start), [this, p, start](const QmpReply& r) {
        if (!r.ok) {
            p->hints_busy = false;
            if (r.error_class != "Disconnected") {
                // Without the command (or without share-hints on the device) there is nothing to
                // target; say so once and leave this VM to KSM's defaults.
                p->hints_off = true;
                qmp_problem(*p, "sharing hints unavailable, not targeting KSM for this VM: " + r.describe());
            }
            hints_settled();
            return;
        }
        std::string error;
        auto page = parse_hints_page(r.value, error);
        if (!page) {
            p->hints_busy = false;
            p->hints_off = true;
            qmp_problem(*p, error);
            hints_settled();
            return;
        }
        p->hints_accum.insert(p->hints_accum.end(), page->hints.begin(), page->hints.end());
        const uint64_t next = start + page->hints.size();
        if (!page->hints.empty() && next < page->total && !p->stopping) {
            fetch_hints(*p, next);
            sync_watch(*p);
            return;
        }
        sharing_.replace(p->spec.name, p->hints_accum);
        p->hint_pages = sharing_.hinted_pages(p->spec.name);
        p->hints_accum.clear();
        p->hints_busy = false;
        p->hints_read = true;
        hints_settled();
    });
    sync_watch(vm);
}

// Whether `vm` takes part in targeting: its hints are (or will be) read and it gets a filter.
bool Fleet::hint_member(const Vm& vm) const {
    return vm.spec.balloon && !vm.hints_off && vm.phase != Vm::Phase::Gone && !vm.stopping;
}

void Fleet::hints_settled() {
    // Filters follow complete rounds only: a VM whose hints have not been read yet would make the
    // others' twins look unique, and dropping a hash from a filter unmerges its pages.
    for (const auto& up : vms_)
        if (hint_member(*up) && (up->hints_busy || !up->hints_read)) return;
    report_index();
    update_filters();
}

void Fleet::report_index() {
    const ShareScope scope = cfg_.ksm.scope == "within" ? ShareScope::WithinVm : ShareScope::AcrossVms;
    uint64_t pages = 0;
    std::string twins;
    size_t n = 0;
    for (const auto& up : vms_) {
        if (!hint_member(*up)) continue;
        pages += sharing_.hinted_pages(up->spec.name);
        if (n++ < 8) twins += (twins.empty() ? "" : ", ") + up->spec.name + " " + std::to_string(sharing_.twins(up->spec.name, scope).size());
    }
    if (n > 8) twins += ", ...";
    const uint64_t saving = sharing_.potential_savings(scope);
    potential_saving_ = std::max(potential_saving_, saving);
    std::string line = "sharing index: " + std::to_string(n) + " VM(s), " + std::to_string(pages) +
                       " hinted pages; twin hashes " + twins + "; best case saves " + std::to_string(saving) + " pages (" +
                       format_size(saving * static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) + ")";
    if (line != last_index_line_) report(line);
    last_index_line_ = line;
}

void Fleet::update_filters() {
    const ShareScope scope = cfg_.ksm.scope == "within" ? ShareScope::WithinVm : ShareScope::AcrossVms;
    for (const auto& up : vms_)
        if (hint_member(*up) && !up->hints_read) return;  // not every VM indexed yet
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (vm.phase != Vm::Phase::Ready || vm.hints_off || vm.stopping || !vm.qmp ||
            vm.qmp->state() != QmpClient::State::Ready)
            continue;
        std::set<uint64_t> want = sharing_.twins(vm.spec.name, scope);
        if (vm.filter_sent && *vm.filter_sent == want) continue;
        Vm* p = &vm;
        vm.qmp->execute("x-blimp-balloon-hint-filter", hint_filter_args(want), [this, p, want](const QmpReply& r) {
            if (r.ok) {
                p->filter_sent = want;
                ++filter_updates_;
                auto num = [&](const char* k) -> std::optional<uint64_t> {
                    if (r.value.contains(k) && r.value[k].is_number_unsigned()) return r.value[k].get<uint64_t>();
                    return std::nullopt;
                };
                p->marked_pages = num("marked-pages");
                p->marked_runs = num("marked-runs");
                report("vm " + p->spec.name + ": KSM targeted at " + std::to_string(want.size()) + " twin hashes" +
                       (p->marked_pages ? ": QEMU marked " + std::to_string(*p->marked_pages) + " pages in " +
                                              std::to_string(p->marked_runs.value_or(0)) + " runs mergeable"
                                        : ""));
                return;
            }
            if (r.error_class == "Disconnected") return;
            p->hints_off = true;
            qmp_problem(*p, "x-blimp-balloon-hint-filter failed: " + r.describe());
        });
        sync_watch(vm);
    }
}

void Fleet::stop_all(const std::string& why) {
    if (stopping_) return;
    stopping_ = true;
    stop_reason_ = why;
    report("stopping all VMs: " + why);
    for (auto& up : vms_) {
        Vm& vm = *up;
        if (!vm.proc.running()) continue;
        vm.stopping = true;
        Vm* p = &vm;
        if (vm.qmp && vm.qmp->state() == QmpClient::State::Ready) {
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
    return std::any_of(vms_.begin(), vms_.end(), [](const auto& vm) { return vm->proc.running(); });
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
        std::string error;
        if (!metrics_.open_csv(cfg_.csv, error)) {
            report(error);
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
        std::vector<std::string> names;
        for (const auto& vm : vms_) names.push_back(vm->spec.name);
        std::string error;
        if (write_plot(cfg_.csv, cfg_.plot, names, error)) report("plot written to " + cfg_.plot);
        else report("plot not written: " + error);
    }
    int status = exit_status();
    write_summary(status);
    return status;
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

void Fleet::write_summary(int status) {
    json j;
    j["exit_status"] = status;
    j["stop_reason"] = stop_reason_.empty() ? "all VMs ended" : stop_reason_;
    j["run_dir"] = run_dir_;
    j["qemu"] = plan_.qemu;
    j["policy"] = policy_->name();
    if (cfg_.budget) j["budget_bytes"] = *cfg_.budget;
    j["duration_s"] = now_s();
    j["vms"] = json::array();
    const auto& sums = metrics_.summary();
    std::printf("\nhangar summary (%s):\n", run_dir_.c_str());
    uint64_t reclaimed = 0;
    for (const auto& vm : vms_) {
        json v;
        v["name"] = vm->spec.name;
        v["app"] = vm->spec.app;
        v["memory_bytes"] = vm->spec.memory;
        v["pid"] = vm->proc.pid();
        std::string line = vm->exit ? vm->exit->describe() : "never started";
        if (vm->exit) {
            v["outcome"] = VmExit::kind_name(vm->exit->kind);
            v["ok"] = vm->exit->ok();
            v["guest_status"] = vm->exit->guest_status;
            v["exit_code"] = vm->exit->exit_code;
            v["signal"] = vm->exit->signal;
            v["detail"] = vm->exit->detail;
            v["description"] = vm->exit->describe();
        }
        v["qmp_errors"] = vm->qmp_errors;
        if (vm->sweeps || vm->swept_pages) v["pstate_discarded_pages"] = vm->swept_pages;
        if (targeting_) {
            v["hint_pages"] = vm->hint_pages;
            v["twin_hashes"] = vm->filter_sent ? vm->filter_sent->size() : 0;
            if (vm->marked_pages) v["marked_pages"] = *vm->marked_pages;
            if (vm->marked_runs) v["marked_runs"] = *vm->marked_runs;
        }
        v["serial_log"] = vm->serial_log;
        auto it = sums.find(vm->spec.name);
        std::string mem;
        if (it != sums.end()) {
            v["peak_rss_bytes"] = it->second.peak_rss;
            // Load-independent denominators for guest throughput on a shared host.
            if (it->second.cpu_seconds) v["qemu_cpu_seconds"] = *it->second.cpu_seconds;
            if (it->second.min_actual) {
                v["min_balloon_actual_bytes"] = *it->second.min_actual;
                reclaimed += vm->spec.memory - std::min(vm->spec.memory, *it->second.min_actual);
            }
            mem = "  peak rss " + format_size(it->second.peak_rss);
            if (it->second.min_actual) mem += ", smallest balloon " + format_size(*it->second.min_actual);
        }
        std::printf("  %-12s %s%s%s\n", vm->spec.name.c_str(), vm->exit && vm->exit->ok() ? "" : "FAILED: ", line.c_str(),
                    mem.c_str());
        if (!vm->qmp_errors.empty())
            std::printf("  %-12s %zu QMP error(s), first: %s\n", "", vm->qmp_errors.size(), vm->qmp_errors[0].c_str());
        j["vms"].push_back(v);
    }
    const auto& k0 = metrics_.first_ksm();
    const auto& k1 = metrics_.last_ksm();
    j["ksm"] = {{"mode", std::string(to_string(cfg_.ksm.mode))},
                {"pages_sharing_end", k1.get("pages_sharing")},
                {"pages_shared_end", k1.get("pages_shared")},
                {"restored", ksm_restore_errors_.empty()},
                {"restore_errors", ksm_restore_errors_},
                {"full_scans", k1.get("full_scans") - std::min(k1.get("full_scans"), k0.get("full_scans"))},
                {"lock", ksm_lock_.empty() ? json(nullptr) : json(ksm_lock_)}};
    if (targeting_)
        j["sharing"] = {{"scope", cfg_.ksm.scope},
                        {"potential_saving_pages", potential_saving_},
                        {"filter_updates", filter_updates_}};
    if (k0.ksmd_cpu_seconds && k1.ksmd_cpu_seconds) j["ksm"]["ksmd_cpu_s"] = *k1.ksmd_cpu_seconds - *k0.ksmd_cpu_seconds;
    const long page = sysconf(_SC_PAGESIZE);
    std::printf("  reclaimed by ballooning (largest inflation, summed): %s; KSM (system-wide) saving at the end: %s (%llu pages sharing)\n",
                format_size(reclaimed).c_str(), format_size(k1.get("pages_sharing") * static_cast<uint64_t>(page)).c_str(),
                static_cast<unsigned long long>(k1.get("pages_sharing")));
    j["reclaimed_bytes"] = reclaimed;
    std::printf("  exit status %d\n", status);
    std::fflush(stdout);
    std::string error;
    if (!write_file_atomic(run_dir_ + "/summary.json", j.dump(2) + "\n", 0644, error)) report(error);
}

}  // namespace hangar
