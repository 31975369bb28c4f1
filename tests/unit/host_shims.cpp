// Host shims for every unit test (and bench/mm): console, panic, the fake clock and timers,
// deferred work (tests/unit/fake_kernel.h describes them).
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "kernel/console.h"
#include "kernel/deferred_work.h"
#include "kernel/panic.h"
#include "kernel/timer.h"
#include "tests/unit/fake_kernel.h"

namespace {

struct Timer {
  uint64_t deadline;
  blimp::timer::Callback fn;
  void* ctx;
};

uint64_t g_now = 100'000'000'000ull;  // 100 s: nothing looks "less than a minute ago" at start
uint64_t g_tick = 1'000'000ull;
void (*g_poll)(void*) = nullptr;
void* g_poll_ctx = nullptr;
bool g_polling = false;
std::vector<Timer> g_timers;
std::vector<blimp::work::WorkItem*> g_work;
bool g_work_running = false;
std::mutex g_log_lock;  // the stress tests run guest code on several threads
std::string g_log;
bool g_echo = true;

void fire_due() {
  for (size_t i = 0; i < g_timers.size();) {
    if (g_timers[i].deadline <= g_now) {
      Timer t = g_timers[i];
      g_timers.erase(g_timers.begin() + long(i));
      t.fn(t.ctx);
      i = 0;
    } else {
      ++i;
    }
  }
}

}  // namespace

void kvprintf(const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  std::lock_guard<std::mutex> g(g_log_lock);
  g_log += buf;
  if (g_echo) fputs(buf, stderr);
}

void kprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
}

void panic(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  throw std::runtime_error(buf);
}

namespace blimp::timer {

void init() {}
uint64_t now_ns() {
  if (!g_polling) {
    g_now += g_tick;
    test::kernel::poll();
  }
  return g_now;
}
void wait_until(uint64_t deadline_ns) {
  test::kernel::poll();
  if (g_now < deadline_ns) g_now = deadline_ns;
  test::kernel::poll();
}
void sleep_ns(uint64_t ns) { wait_until(g_now + ns); }
ErrorOr<void> call_at(uint64_t deadline_ns, Callback fn, void* context) {
  if (g_timers.size() >= 16) return Error::Busy;  // the guest has a handful of slots
  g_timers.push_back({deadline_ns, fn, context});
  return {};
}
void cancel(Callback fn, void* context) {
  std::erase_if(g_timers, [&](const Timer& t) { return t.fn == fn && t.ctx == context; });
}
uint64_t tsc_hz() { return 1'000'000'000ull; }

}  // namespace blimp::timer

namespace blimp::work {

void schedule(WorkItem& item) {
  if (item.queued) return;
  item.queued = true;
  g_work.push_back(&item);
}
void run_pending() {
  if (g_work_running) return;
  g_work_running = true;
  while (!g_work.empty()) {
    WorkItem* w = g_work.front();
    g_work.erase(g_work.begin());
    w->queued = false;
    w->fn(w->context);
  }
  g_work_running = false;
}
bool running() { return g_work_running; }

}  // namespace blimp::work

namespace blimp::test::kernel {

uint64_t now() { return g_now; }
void set_now(uint64_t ns) { g_now = ns; }
void set_tick(uint64_t ns) { g_tick = ns; }
void set_poll_hook(void (*fn)(void*), void* ctx) {
  g_poll = fn;
  g_poll_ctx = ctx;
}
void poll() {
  if (g_polling) return;
  g_polling = true;
  if (g_poll) g_poll(g_poll_ctx);
  fire_due();
  g_polling = false;
}
size_t timers_armed() { return g_timers.size(); }
void reset() {
  g_timers.clear();
  for (auto* w : g_work) w->queued = false;
  g_work.clear();
  g_log.clear();
  g_poll = nullptr;
  g_poll_ctx = nullptr;
}
bool work_pending() { return !g_work.empty(); }
std::string& log() { return g_log; }
bool log_contains(const char* s) { return g_log.find(s) != std::string::npos; }
void set_echo(bool on) { g_echo = on; }

}  // namespace blimp::test::kernel
