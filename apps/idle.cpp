// app=idle: boots, says it is ready, and halts. The guest takes interrupts (balloon, timer)
// but otherwise uses no host CPU. duration=TIME exits after TIME (default: run until killed);
// report=TIME prints a heartbeat line every TIME. The power button (power::stop_requested()) ends
// it with status 0.
#include <cinttypes>
#include <cstdio>

#include "apps/app.h"
#include "apps/app_args.h"
#include "kernel/power.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;

int idle_main(int argc, char** argv) {
  uint64_t duration = 0, report = 0;
  if (!app_args::get_duration("idle", argc, argv, "duration", duration) ||
      !app_args::get_duration("idle", argc, argv, "report", report))
    return 2;
  printf("idle: ready\n");
  uint64_t start = timer::now_ns();
  uint64_t next_report = report ? start + report : 0;
  for (;;) {
    if (power::stop_requested()) {
      printf("idle: stop requested\n");
      break;
    }
    uint64_t now = timer::now_ns();
    if (duration && now - start >= duration) break;
    uint64_t wake = duration ? start + duration : now + 3600000000000ull;
    if (next_report && next_report < wake) wake = next_report;
    timer::wait_until(wake);
    now = timer::now_ns();
    if (next_report && now >= next_report) {
      printf("idle: up %" PRIu64 " ms\n", uint64_t((now - start) / 1000000ull));
      next_report += report;
    }
  }
  printf("idle: done\n");
  return 0;
}

}  // namespace

BLIMP_APP(idle, "idle", "boot, report ready, and halt (duration=TIME, report=TIME)", idle_main);
