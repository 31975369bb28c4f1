// The summary at the end of a run: a table on stdout and summary.json in the run directory.
#include <unistd.h>
#include <algorithm>
#include <cstdio>

#include "fleet.h"
#include "fleet_vm.h"
#include "safe_fs.h"

namespace hangar {

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
        v["host"] = vm->host();
        if (vm->on_libvirt()) v["domain"] = vm->spec.domain.empty() ? vm->spec.name : vm->spec.domain;
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
        if (vm->sweeps || vm->swept_pages) {
            v["pstate_discarded_pages"] = vm->swept_pages;
            if (cfg_.policy.sweep_when == SweepWhen::Pressure) v["pstate_asked_pages"] = vm->sweep_asked;
        }
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
        std::printf("  %-12s %s%s%s\n", vm->spec.name.c_str(),
                    vm->exit && vm->exit->ok() ? "" : "FAILED: ", line.c_str(), mem.c_str());
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
        j["sharing"] = {{"scope", std::string(to_string(cfg_.ksm.scope))},
                        {"potential_saving_pages", potential_saving_},
                        {"filter_updates", filter_updates_}};
    if (k0.ksmd_cpu_seconds && k1.ksmd_cpu_seconds)
        j["ksm"]["ksmd_cpu_s"] = *k1.ksmd_cpu_seconds - *k0.ksmd_cpu_seconds;
    const long page = sysconf(_SC_PAGESIZE);
    std::printf(
        "  reclaimed by ballooning (largest inflation, summed): %s; KSM (system-wide) saving at the end: %s (%llu "
        "pages sharing)\n",
        format_size(reclaimed).c_str(), format_size(k1.get("pages_sharing") * static_cast<uint64_t>(page)).c_str(),
        static_cast<unsigned long long>(k1.get("pages_sharing")));
    j["reclaimed_bytes"] = reclaimed;
    if (cfg_.policy.sweep.count() > 0)
        j["page_state_sweeps"] = {{"when", std::string(to_string(cfg_.policy.sweep_when))},
                                  {"rounds", sweep_tally_.rounds},
                                  {"rounds_without_pressure", sweep_tally_.idle_rounds},
                                  {"needed_pages", sweep_tally_.needed_pages},
                                  {"host_reserve_bytes", cfg_.policy.host_reserve}};
    if (auto story = host_memory_story(metrics_.fleet(), cfg_.budget)) {
        // What the host got back: the fleet's RSS (what the host really backs), not balloon sizes.
        json h = {{"peak_rss_bytes", story->peak.rss},
                  {"peak_s", story->peak.time_s},
                  {"end_rss_bytes", story->end.rss},
                  {"end_s", story->end.time_s},
                  {"end_guest_memory_bytes", story->end.actual},
                  {"returned_bytes", story->returned},
                  {"vms", story->peak.vms}};
        if (story->within_budget_s) h["rss_within_budget_s"] = *story->within_budget_s;
        j["host_memory"] = h;
        std::printf(
            "  host memory (QEMU RSS of the %zu VMs, summed while all ran): peak %s at %.0f s, %s at %.0f s: %s came "
            "back",
            story->peak.vms, format_size(story->peak.rss).c_str(), story->peak.time_s,
            format_size(story->end.rss).c_str(), story->end.time_s, format_size(story->returned).c_str());
        if (cfg_.budget) {
            if (story->within_budget_s)
                std::printf("; under the %s budget from %.0f s", format_size(*cfg_.budget).c_str(),
                            *story->within_budget_s);
            else
                std::printf("; never under the %s budget after the peak", format_size(*cfg_.budget).c_str());
        }
        std::printf("\n");
    }
    // Across hosts, the same story per host, against that host's budget.
    if (!cfg_.hosts.empty()) {
        j["hosts"] = json::array();
        for (const auto& [host, points] : metrics_.host_fleet()) {
            const auto budget = host_budget(host);
            json h = {{"name", host}};
            for (const auto& spec : cfg_.hosts)
                if (spec.name == host) h["uri"] = spec.uri;
            if (budget) h["budget_bytes"] = *budget;
            if (auto story = host_memory_story(points, budget)) {
                h["peak_rss_bytes"] = story->peak.rss;
                h["peak_s"] = story->peak.time_s;
                h["end_rss_bytes"] = story->end.rss;
                h["end_s"] = story->end.time_s;
                h["end_guest_memory_bytes"] = story->end.actual;
                h["returned_bytes"] = story->returned;
                h["vms"] = story->peak.vms;
                if (story->within_budget_s) h["rss_within_budget_s"] = *story->within_budget_s;
                std::printf("  host %s (%zu VMs): QEMU RSS peak %s at %.0f s, %s at %.0f s: %s came back", host.c_str(),
                            story->peak.vms, format_size(story->peak.rss).c_str(), story->peak.time_s,
                            format_size(story->end.rss).c_str(), story->end.time_s,
                            format_size(story->returned).c_str());
                if (budget)
                    std::printf("; guest memory %s of the %s budget", format_size(story->end.actual).c_str(),
                                format_size(*budget).c_str());
                std::printf("\n");
            }
            j["hosts"].push_back(h);
        }
    }
    std::printf("  exit status %d\n", status);
    std::fflush(stdout);
    auto written = write_file_atomic(run_dir_ + "/summary.json", j.dump(2) + "\n", 0644);
    if (written.is_error()) report(written.error().message);
}

}  // namespace hangar
