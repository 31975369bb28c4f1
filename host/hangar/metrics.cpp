#include "metrics.h"

#include <sys/wait.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "safe_fs.h"
#include "vm_process.h"

namespace hangar {

namespace {

std::string cell(const std::optional<uint64_t>& v) { return v ? std::to_string(*v) : ""; }

std::string mib(const std::optional<uint64_t>& v) { return v ? std::to_string(*v >> 20) : "-"; }

}  // namespace

const std::vector<std::string>& csv_columns() {
    static const std::vector<std::string> cols = {"time_s",
                                                  "vm",
                                                  "pid",
                                                  "state",
                                                  "memory_bytes",
                                                  "rss_bytes",
                                                  "balloon_actual_bytes",
                                                  "balloon_target_bytes",
                                                  "guest_free_bytes",
                                                  "guest_available_bytes",
                                                  "guest_total_bytes",
                                                  "guest_disk_caches_bytes",
                                                  "guest_major_faults",
                                                  "guest_minor_faults",
                                                  "guest_swap_in",
                                                  "guest_swap_out",
                                                  "guest_alloc_stalls",
                                                  "guest_direct_reclaims",
                                                  "guest_stats_update",
                                                  "vm_ksm_merging_pages",
                                                  "ksm_pages_shared",
                                                  "ksm_pages_sharing",
                                                  "ksm_pages_unshared",
                                                  "ksm_pages_volatile",
                                                  "ksm_full_scans",
                                                  "ksm_pages_scanned",
                                                  "ksmd_cpu_s",
                                                  "hint_pages",
                                                  "twin_hashes",
                                                  "pstate_discarded_pages",
                                                  "host",
                                                  "measured_working_set_bytes",
                                                  "measured_idle_bytes"};
    return cols;
}

MetricsSampler::MetricsSampler(const KsmControl* ksm, std::string proc_root) : ksm_(ksm), proc_(std::move(proc_root)) {}

MetricsSampler::~MetricsSampler() {
    if (csv_) std::fclose(csv_);
}

ErrorOr<void> MetricsSampler::open_csv(const std::string& path) {
    csv_ = fopen_nofollow(path, "w");
    if (!csv_) return Error{"cannot create " + path + ": " + std::strerror(errno)};
    const auto& cols = csv_columns();
    for (size_t i = 0; i < cols.size(); ++i) std::fprintf(csv_, "%s%s", i ? "," : "", cols[i].c_str());
    std::fprintf(csv_, "\n");
    std::fflush(csv_);
    return {};
}

void MetricsSampler::record(double t, std::vector<VmSample>& samples) {
    KsmCounters ksm;
    if (ksm_) ksm = ksm_->counters();
    if (!have_ksm_) {
        first_ksm_ = ksm;
        have_ksm_ = true;
    }
    last_ksm_ = ksm;
    FleetPoint point{t, 0, 0, 0};
    bool whole = !samples.empty();
    // Per host, with the same rule: a host's point counts only when all its VMs ran.
    std::map<std::string, std::pair<FleetPoint, bool>> hosts;
    for (auto& s : samples) {
        if (s.pid > 0 && !s.rss) s.rss = read_rss(s.pid, proc_);
        if (s.pid > 0 && !s.ksm_merging_pages) s.ksm_merging_pages = read_ksm_merging_pages(s.pid, proc_);
        auto& sum = summary_[s.vm];
        sum.memory = s.memory;
        if (s.pid > 0) {
            if (auto cpu = read_cpu_seconds(s.pid, proc_)) sum.cpu_seconds = cpu;
        }
        if (s.rss) {
            sum.peak_rss = std::max(sum.peak_rss, *s.rss);
            sum.last_rss = *s.rss;
        }
        auto& [host_point, host_whole] = hosts.try_emplace(s.host, FleetPoint{t, 0, 0, 0}, true).first->second;
        if (s.state == "running" && s.rss) {
            for (FleetPoint* p : {&point, &host_point}) {
                p->vms++;
                p->rss += *s.rss;
                p->actual += s.balloon_actual.value_or(s.memory);
            }
        } else {
            whole = false;
            host_whole = false;
        }
        if (s.balloon_actual) {
            sum.last_actual = s.balloon_actual;
            sum.min_actual = sum.min_actual ? std::min(*sum.min_actual, *s.balloon_actual) : *s.balloon_actual;
        }
        if (!csv_) continue;
        const GuestStats g = s.stats.value_or(GuestStats{});
        std::string row = std::to_string(t).substr(0, std::to_string(t).find('.') + 4);
        auto add = [&row](const std::string& v) { row += "," + v; };
        add(s.vm);
        add(s.pid > 0 ? std::to_string(s.pid) : "");
        add(s.state);
        add(std::to_string(s.memory));
        add(cell(s.rss));
        add(cell(s.balloon_actual));
        add(cell(s.balloon_target));
        add(cell(g.free_memory));
        add(cell(g.available_memory));
        add(cell(g.total_memory));
        add(cell(g.disk_caches));
        add(cell(g.major_faults));
        add(cell(g.minor_faults));
        add(cell(g.swap_in));
        add(cell(g.swap_out));
        add(cell(g.alloc_stalls));
        add(cell(g.direct_reclaims));
        add(s.stats ? std::to_string(g.last_update) : "");
        add(cell(s.ksm_merging_pages));
        for (const char* k :
             {"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans", "pages_scanned"})
            add(ksm.values.count(k) ? std::to_string(ksm.values.at(k)) : "");
        if (ksm.ksmd_cpu_seconds) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.2f", *ksm.ksmd_cpu_seconds);
            add(buf);
        } else {
            add("");
        }
        add(cell(s.hint_pages));
        add(cell(s.twin_hashes));
        add(cell(s.pstate_discarded));
        add(s.host);
        add(cell(s.measured_working_set));
        add(cell(s.measured_idle));
        std::fprintf(csv_, "%s\n", row.c_str());
        ++rows_;
    }
    if (whole) fleet_.push_back(point);
    for (const auto& [host, p] : hosts)
        if (p.second) host_fleet_[host].push_back(p.first);
    if (csv_) std::fflush(csv_);
}

namespace {
size_t most_vms(const std::vector<FleetPoint>& points) {
    size_t most = 0;
    for (const auto& p : points) most = std::max(most, p.vms);
    return most;
}
}  // namespace

std::optional<HostMemoryStory> host_memory_story(const std::vector<FleetPoint>& points,
                                                 std::optional<uint64_t> budget) {
    // Only the samples with the most VMs: before the last one booted, or after the first one
    // ended, the sum says nothing about reclaim.
    const size_t most = most_vms(points);
    std::optional<HostMemoryStory> story;
    for (const auto& p : points) {
        if (p.vms != most || most == 0) continue;
        if (!story) story = HostMemoryStory{p, p, 0, {}};
        if (p.rss > story->peak.rss) {
            story->peak = p;
            story->within_budget_s.reset();
        }
        story->end = p;
        if (budget && !story->within_budget_s && p.rss <= *budget) story->within_budget_s = p.time_s;
    }
    if (story) story->returned = story->peak.rss - std::min(story->peak.rss, story->end.rss);
    return story;
}

ErrorOr<void> write_plot(const std::string& csv_path, const std::string& png_path, const std::vector<std::string>& vms,
                         const std::vector<FleetPoint>& fleet, std::optional<uint64_t> budget) {
    // One data file per VM: gnuplot breaks a line at every skipped point, so filtering a mixed
    // CSV inside gnuplot draws nothing but dots.
    // Built in memory and written with write_file_atomic (no symlink followed: hangar is root).
    std::map<std::string, std::ostringstream> data;
    std::map<std::string, std::string> data_path;
    for (const auto& vm : vms) {
        data_path[vm] = png_path + "." + vm + ".dat";
        data[vm] << "# time_s rss_mib balloon_mib\n";
    }
    {
        std::ifstream csv(csv_path);
        if (!csv) {
            return Error{"cannot read " + csv_path};
        }
        std::string line;
        std::getline(csv, line);  // header
        while (std::getline(csv, line)) {
            std::vector<std::string> cells;
            size_t pos = 0;
            for (size_t comma; (comma = line.find(',', pos)) != std::string::npos; pos = comma + 1)
                cells.push_back(line.substr(pos, comma - pos));
            cells.push_back(line.substr(pos));
            if (cells.size() < 7 || !data.count(cells[1])) continue;
            auto mib = [](const std::string& v) {
                return v.empty() ? std::string("?") : std::to_string(std::stod(v) / 1048576.0);
            };
            // Columns follow csv_columns(): 0 time, 1 vm, 5 rss, 6 balloon actual.
            data[cells[1]] << cells[0] << " " << mib(cells[5]) << " " << mib(cells[6]) << "\n";
        }
    }
    for (auto& [vm, f] : data) TRY(write_file_atomic(data_path[vm], f.str(), 0644));
    const std::string fleet_path = png_path + ".fleet.dat";
    if (!fleet.empty()) {
        // As host_memory_story(): only the samples with the most VMs running.
        const size_t most = most_vms(fleet);
        std::ostringstream f;
        f << "# time_s rss_sum_mib actual_sum_mib (samples with every VM running)\n";
        for (const auto& p : fleet)
            if (p.vms == most) f << p.time_s << " " << p.rss / 1048576.0 << " " << p.actual / 1048576.0 << "\n";
        TRY(write_file_atomic(fleet_path, f.str(), 0644));
    }
    const std::string script = png_path + ".gp";
    {
        std::ostringstream gp;
        gp << "set terminal pngcairo size 1200,700 noenhanced\n"
           << "set output '" << png_path << "'\n"
           << "set datafile missing '?'\n"
           << "set key outside right\n"
           << "set xlabel 'time (s)'\nset ylabel 'MiB'\nset yrange [0:*]\n"
           << "set title 'hangar: QEMU RSS (solid) and balloon size (dashed) per VM"
           << (fleet.empty() ? "" : "; all VMs summed (black)") << "'\n"
           << "set grid\n";
        if (vms.empty()) {
            gp << "set xrange [0:1]\nplot 0 title 'no VMs'\n";
        } else {
            gp << "plot ";
            for (size_t i = 0; i < vms.size(); ++i) {
                const std::string& f = data_path[vms[i]];
                if (i) gp << ", \\\n     ";
                gp << "'" << f << "' using 1:2 with lines lw 2 lc " << i + 1 << " title '" << vms[i]
                   << " rss', \\\n     '" << f << "' using 1:3 with lines dt 2 lw 2 lc " << i + 1 << " title '"
                   << vms[i] << " balloon'";
            }
            if (!fleet.empty())
                gp << ", \\\n     '" << fleet_path << "' using 1:2 with lines lw 3 lc rgb 'black' title 'all VMs rss'";
            if (budget)
                gp << ", \\\n     " << *budget / 1048576.0 << " with lines dt 3 lw 2 lc rgb 'red' title 'budget'";
            gp << "\n";
        }
        TRY(write_file_atomic(script, gp.str(), 0644));
    }
    std::string cmd = "gnuplot '" + script + "' 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        return Error{"cannot run gnuplot"};
    }
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    int rc = pclose(p);
    if (rc != 0) {
        return Error{"gnuplot failed (" + std::to_string(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1) +
                     "): " + out.substr(0, 400)};
    }
    return {};
}

StatusView::Mode StatusView::choose(StatusDisplay setting, int fd) {
    if (setting == StatusDisplay::Off) return Mode::Off;
    if (setting == StatusDisplay::Plain) return Mode::Plain;
    if (setting == StatusDisplay::Tty) return Mode::Tty;
    const char* term = getenv("TERM");
    return isatty(fd) && term && std::strcmp(term, "dumb") != 0 ? Mode::Tty : Mode::Plain;
}

void StatusView::show(const std::vector<std::string>& lines) {
    if (mode_ == Mode::Off) return;
    if (mode_ == Mode::Tty) {
        // Cursor up over the previous block, then rewrite each line and clear its tail.
        if (drawn_) std::fprintf(out_, "\033[%zuA", drawn_);
        for (const auto& l : lines) std::fprintf(out_, "\r%s\033[K\n", l.c_str());
        for (size_t i = lines.size(); i < drawn_; ++i) std::fprintf(out_, "\r\033[K\n");
        drawn_ = std::max(drawn_, lines.size());
    } else {
        for (const auto& l : lines) std::fprintf(out_, "%s\n", l.c_str());
    }
    std::fflush(out_);
}

void StatusView::message(const std::string& line) {
    // Messages go to stderr; on a terminal the live block (stdout) is wiped first so the message
    // is not drawn over, and redrawn below it at the next sample.
    if (mode_ == Mode::Tty && drawn_) {
        std::fprintf(out_, "\033[%zuA\r\033[J", drawn_);
        std::fflush(out_);
        drawn_ = 0;
    }
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
}

std::string StatusView::format_line(const VmSample& s) {
    char buf[256];
    std::string free = s.stats && s.stats->available_memory ? mib(s.stats->available_memory)
                       : s.stats                            ? mib(s.stats->free_memory)
                                                            : "-";
    std::snprintf(buf, sizeof buf,
                  "%-12s %-9s pid %-7s rss %6s MiB  balloon %6s/%-6s MiB  target %6s  guest-avail %6s MiB",
                  s.vm.c_str(), s.state.c_str(), s.pid > 0 ? std::to_string(s.pid).c_str() : "-", mib(s.rss).c_str(),
                  mib(s.balloon_actual).c_str(), std::to_string(s.memory >> 20).c_str(), mib(s.balloon_target).c_str(),
                  free.c_str());
    std::string line = buf;
    if (s.measured_idle) line += "  measured-idle " + mib(s.measured_idle) + " MiB";
    return line;
}

}  // namespace hangar
