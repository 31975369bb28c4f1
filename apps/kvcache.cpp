// app=kvcache: a key-value cache whose values are expensive to recompute, registered as a
// shrinker. It grows into whatever memory is free; under pressure (an allocation failing, the
// balloon wanting memory) the allocator asks it to shrink and it drops its coldest entries.
// It reports hit rate and throughput, so hosts can see what overcommit costs the app.
//
//   kvcache [keys=200000] [duration=10s] [ops=0] [report=1s] [work=2000] [max=0] [seed=1]
//           [threads=1]
//
// keys      size of the key space (one 4 KiB value per key)
// ops       stop after this many requests (0: no limit; duration= still applies, so a fixed
//           amount of work for a benchmark is ops=N with a long enough duration=)
// work      extra mixing rounds per recompute: the cost of a miss
// max       cap on cached values (0: as much as memory allows)
// Requests are skewed (the square of a uniform variable), so a cache of a fraction of the key
// space catches most of them. Every hit is verified against the recomputed content's checksum;
// a mismatch is corruption and fails the app.
// threads=N (issue 17): N workers, one per CPU (apps/workers.h: the BSP and threads on the first
// N-1 other online CPUs; more than are online is an error, status 2), send requests to the one
// cache at once, each from its own random stream (worker 0's is seed='s, as with threads=1);
// ops= counts the requests of all of them. Worker 0, on the BSP, also serves the balloon's
// reclaim point and prints the reports. A worker on an AP cannot reclaim: there an insert into a
// full memory fails (the request is still answered) where the BSP's would shrink the cache.
// With N > 1, "kvcache: N threads, on cpus 0,1,..." follows "started", "kvcache: cpu C ops=N
// hits=H hit_rate=R" comes per worker before the done line, which gets " threads=N" before "ok".
// Output: "kvcache: t=S ops=N hits=H hit_rate=R ops_per_s=T entries=E cache_mib=M shrunk=P"
// per report, and "kvcache: done ops=N hit_rate=R ops_per_s=T shrunk=P seconds=S ok" at the end
// (exit 0, or 1 on corruption; S is the time from "kvcache: started" to the end).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "apps/workers.h"
#include "kernel/console.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "lib/spinlock.h"
#include "mm/mm.h"

namespace {

using namespace blimp;

using apps::kGoldenGamma;
using apps::mix64;

struct Entry {
  uint64_t key;
  uint64_t checksum;
  uint64_t* value;  // one page
  Entry* hash_next;
  Entry* lru_prev;  // towards most recently used
  Entry* lru_next;  // towards least recently used
};

// threads=N shares one cache between the workers under one SpinLock over the hash table, the LRU
// list and the counts. Partitioning the key space per worker would not remove the lock: the
// shrinker (on the BSP, from any worker's allocation there or its reclaim point) drops the coldest
// entries of the whole cache, so it reaches into every partition while their workers run, and a
// per-partition LRU would no longer be one LRU. One lock is the simplest design that is correct;
// it stays cheap by being held only for the list and table work and a hit's 8-word checksum. What
// costs, computing a missing value and allocating or freeing its page, runs outside it, so the
// workers compute in parallel. Nothing is allocated or freed under it either: an allocation on
// the BSP may reclaim, which calls scan_objects, which takes the lock (not recursive), so a page
// is allocated before the lock and an entry unlinked under it is freed after it.
class KvCache final : public mm::Shrinker {
 public:
  bool init(uint64_t keys, uint64_t work, uint64_t max_entries) {
    keys_ = keys;
    work_ = work;
    max_entries_ = max_entries;
    buckets_ = 1;
    while (buckets_ < keys / 2) buckets_ <<= 1;
    table_ = static_cast<Entry**>(calloc(buckets_, sizeof(Entry*)));
    return table_ != nullptr;
  }

  // Returns false on corruption. From any CPU.
  bool get(uint64_t key, bool& hit) {
    uint64_t sum = 0, want = 0;
    uint64_t* value = nullptr;
    {
      SpinLockGuard guard(lock_);
      if (Entry* e = lookup(key)) {
        touch(e);
        // Under the lock: once it is released the shrinker may free the page.
        value = e->value;
        want = e->checksum;
        for (int i = 0; i < 512; i += 64) sum += value[i];
      }
    }
    if (value) {
      hit = true;
      if (sum != want) {
        // kprintf, not printf: any CPU may get here.
        kprintf("kvcache: CORRUPTION: key %lu value at %p\n", key, value);
        return false;
      }
      return true;
    }
    hit = false;
    insert(key);
    return true;
  }

  // Lock-free: the balloon's stats answer calls it from wherever it runs.
  size_t count_objects() override { return entries_.load(MemoryOrder::Relaxed); }

  // On the BSP only (reclaim never runs on an AP), while workers on other CPUs run.
  size_t scan_objects(size_t nr_pages) override {
    Entry* victims = nullptr;
    size_t freed = 0;
    {
      SpinLockGuard guard(lock_);
      while (freed < nr_pages && lru_tail_) {
        Entry* e = unlink(lru_tail_);
        e->hash_next = victims;
        victims = e;
        freed++;
      }
    }
    while (victims) {
      Entry* next = victims->hash_next;
      release(victims);
      victims = next;
    }
    shrunk_.fetch_add(freed);
    return freed;
  }

  uint64_t entries() const { return entries_.load(MemoryOrder::Relaxed); }
  uint64_t shrunk() const { return shrunk_.load(MemoryOrder::Relaxed); }

 private:
  // The lock is held.
  Entry* lookup(uint64_t key) {
    for (Entry* e = table_[key & (buckets_ - 1)]; e; e = e->hash_next)
      if (e->key == key) return e;
    return nullptr;
  }

  void compute(uint64_t key, uint64_t* page, uint64_t& checksum) {
    uint64_t s = mix64(key + 1);
    for (int i = 0; i < 512; i++) page[i] = s = mix64(s + i);
    for (uint64_t r = 0; r < work_; r++) s = mix64(s);  // the expensive part of a miss
    page[0] ^= s & 0;  // keep the loop from being optimised away without changing the value
    checksum = 0;
    for (int i = 0; i < 512; i += 64) checksum += page[i];
  }

  void insert(uint64_t key) {
    auto* e = static_cast<Entry*>(malloc(sizeof(Entry)));
    if (!e) return;
    // On the BSP the allocation itself may shrink us (through the allocator's reclaim path); on
    // an AP it fails instead.
    auto page = mm::pages().alloc_pages(0, mm::Owner::App);
    if (page.is_error()) {
      free(e);
      return;
    }
    e->value = phys_to_virt<uint64_t>(page.value());
    e->key = key;
    compute(key, e->value, e->checksum);
    Entry* victim = nullptr;
    bool raced = false;
    {
      SpinLockGuard guard(lock_);
      // Another worker may have inserted the key while this one computed it.
      raced = lookup(key) != nullptr;
      if (!raced) {
        if (max_entries_ && entries_.load(MemoryOrder::Relaxed) >= max_entries_ && lru_tail_)
          victim = unlink(lru_tail_);
        Entry*& bucket = table_[key & (buckets_ - 1)];
        e->hash_next = bucket;
        bucket = e;
        e->lru_prev = nullptr;
        e->lru_next = lru_head_;
        if (lru_head_) lru_head_->lru_prev = e;
        lru_head_ = e;
        if (!lru_tail_) lru_tail_ = e;
        entries_.fetch_add(1);
      }
    }
    if (raced) release(e);
    if (victim) release(victim);
  }

  // The lock is held.
  void touch(Entry* e) {
    if (e == lru_head_) return;
    unlink_lru(e);
    e->lru_prev = nullptr;
    e->lru_next = lru_head_;
    if (lru_head_) lru_head_->lru_prev = e;
    lru_head_ = e;
    if (!lru_tail_) lru_tail_ = e;
  }

  // The lock is held.
  void unlink_lru(Entry* e) {
    if (e->lru_prev)
      e->lru_prev->lru_next = e->lru_next;
    else
      lru_head_ = e->lru_next;
    if (e->lru_next)
      e->lru_next->lru_prev = e->lru_prev;
    else
      lru_tail_ = e->lru_prev;
  }

  // The lock is held: takes e out of the table and the list; release() it after unlocking.
  Entry* unlink(Entry* e) {
    unlink_lru(e);
    Entry** p = &table_[e->key & (buckets_ - 1)];
    while (*p != e) p = &(*p)->hash_next;
    *p = e->hash_next;
    entries_.fetch_sub(1);
    return e;
  }

  // Without the lock: an entry no worker can reach any more.
  static void release(Entry* e) {
    mm::pages().free_pages(virt_to_phys(e->value), 0);
    free(e);
  }

  uint64_t keys_ = 0, work_ = 0, max_entries_ = 0, buckets_ = 0;
  SpinLock lock_{LockRank::kApp};
  Entry** table_ = nullptr;
  Entry* lru_head_ = nullptr;
  Entry* lru_tail_ = nullptr;
  Atomic<uint64_t> entries_{0}, shrunk_{0};
};

KvCache g_cache;

// One worker's request stream and counts; the BSP reads the counts after the join.
struct Worker {
  uint64_t rng = 0;
  uint64_t ops = 0, hits = 0;
  bool corrupt = false;
};

Worker g_workers[percpu::kMaxCpus];
apps::WorkerCpus g_cpus;
uint64_t g_keys = 0, g_max_ops = 0, g_duration = 0, g_report = 0;
Atomic<uint64_t> g_claimed{0};         // requests started, against ops=
Atomic<uint64_t> g_ops{0}, g_hits{0};  // over all workers, for the reports
Atomic<bool> g_stop{false};            // set by worker 0 (the end) or a worker seeing corruption
Atomic<size_t> g_running{0};           // workers on APs still running
uint64_t g_start = 0;

uint64_t next_key(uint64_t& rng) {
  rng = mix64(rng);
  double u = double(rng >> 11) * (1.0 / 9007199254740992.0);
  return uint64_t(u * u * double(g_keys));
}

// Up to 64 requests; false once ops= is used up.
bool run_batch(Worker& w) {
  uint64_t ops = 0, hits = 0;
  bool more = true;
  for (int i = 0; i < 64 && !g_stop.load(MemoryOrder::Relaxed); i++) {
    if (g_max_ops && g_claimed.fetch_add(1) >= g_max_ops) {
      more = false;
      break;
    }
    bool hit;
    if (!g_cache.get(next_key(w.rng), hit)) {
      w.corrupt = true;
      g_stop.store(true);
      break;
    }
    ops++;
    hits += hit;
  }
  w.ops += ops;
  w.hits += hits;
  g_ops.fetch_add(ops);
  g_hits.fetch_add(hits);
  return more;
}

// Workers 1..N-1: requests until worker 0 ends the run (or ops= is used up).
void serve(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  while (!g_stop.load() && run_batch(w)) {
  }
  g_running.fetch_sub(1);
}

// Every worker's function. Worker 0, on the BSP, leads: besides its requests it serves the
// balloon's reclaim point, watches the power button and the clock, reports, and ends the run.
void run(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  if (&w != &g_workers[0]) return serve(arg);
  uint64_t next_report = g_start + g_report;
  uint64_t last_ops = 0, last_hits = 0, last_t = g_start;
  bool more = true;
  while (!w.corrupt) {
    if (more) more = run_batch(w);
    if (g_stop.load()) break;  // another worker saw corruption
    // Between requests the cache is consistent: a safe point for the balloon to shrink it (a
    // warm cache that no longer allocates would otherwise never give the balloon anything).
    mm::pages().reclaim_point();
    if (power::stop_requested()) {
      printf("kvcache: stop requested\n");
      break;
    }
    // ops= is used up once every worker has finished its last request.
    const bool ops_done = !more && g_running.load() == 0;
    uint64_t now = timer::now_ns();
    if (now >= next_report || now - g_start >= g_duration || ops_done) {
      uint64_t ops = g_ops.load(), hits = g_hits.load();
      uint64_t d_ops = ops - last_ops, d_hits = hits - last_hits;
      double secs = double(now - last_t) / 1e9;
      printf("kvcache: t=%.1f ops=%" PRIu64 " hits=%" PRIu64
             " hit_rate=%.3f ops_per_s=%.0f "
             "entries=%" PRIu64 " cache_mib=%" PRIu64 " shrunk=%" PRIu64 "\n",
             double(now - g_start) / 1e9, d_ops, d_hits,
             d_ops ? double(d_hits) / double(d_ops) : 0.0, double(d_ops) / secs, g_cache.entries(),
             (g_cache.entries() * 4096) >> 20, g_cache.shrunk());
      last_ops = ops;
      last_hits = hits;
      last_t = now;
      next_report += g_report;
      if (now - g_start >= g_duration || ops_done) break;
    }
  }
  g_stop.store(true);
}

int kvcache_main(int argc, char** argv) {
  uint64_t keys = 200000, duration = 10000000000ull, report = 1000000000ull, work = 2000, max = 0,
           seed = 1, max_ops = 0, nthreads = 1;
  if (!app_args::get_u64("kvcache", argc, argv, "keys", keys) ||
      !app_args::get_duration("kvcache", argc, argv, "duration", duration) ||
      !app_args::get_duration("kvcache", argc, argv, "report", report) ||
      !app_args::get_u64("kvcache", argc, argv, "work", work) ||
      !app_args::get_u64("kvcache", argc, argv, "max", max) ||
      !app_args::get_u64("kvcache", argc, argv, "seed", seed) ||
      !app_args::get_u64("kvcache", argc, argv, "ops", max_ops) ||
      !app_args::get_u64("kvcache", argc, argv, "threads", nthreads))
    return 2;
  if (keys == 0 || report == 0) {
    printf("kvcache: keys and report must be positive\n");
    return 2;
  }
  if (!apps::choose_worker_cpus("kvcache", nthreads, g_cpus)) return 2;
  const size_t n = g_cpus.count;
  if (!g_cache.init(keys, work, max)) {
    printf("kvcache: out of memory for the hash table\n");
    return 1;
  }
  g_keys = keys;
  g_max_ops = max_ops;
  g_duration = duration;
  g_report = report;
  // Worker 0 keeps the seed (threads=1 makes the requests it always made); the others get
  // streams of their own.
  for (size_t i = 0; i < n; i++) g_workers[i].rng = i == 0 ? seed : mix64(seed + i * kGoldenGamma);
  g_running.store(n - 1);
  mm::pages().register_shrinker(&g_cache);
  g_start = timer::now_ns();
  printf("kvcache: started, %" PRIu64 " keys\n", keys);
  if (n > 1) apps::print_worker_cpus("kvcache", g_cpus);
  const bool started =
      apps::run_on_workers("kvcache", g_cpus, run, g_workers, [] { g_stop.store(true); });
  mm::pages().unregister_shrinker(&g_cache);
  if (!started) return 1;
  double secs = double(timer::now_ns() - g_start) / 1e9;
  uint64_t ops = g_ops.load(), hits = g_hits.load();
  bool ok = true;
  for (size_t i = 0; i < n; i++) {
    const Worker& w = g_workers[i];
    ok &= !w.corrupt;
    if (n > 1)
      printf("kvcache: cpu %zu ops=%" PRIu64 " hits=%" PRIu64 " hit_rate=%.3f%s\n", g_cpus.cpu[i],
             w.ops, w.hits, w.ops ? double(w.hits) / double(w.ops) : 0.0,
             w.corrupt ? " CORRUPTION" : "");
  }
  char threads_note[32] = "";
  if (n > 1) format(threads_note, sizeof threads_note, " threads=%zu", n);
  printf("kvcache: done ops=%" PRIu64 " hit_rate=%.3f ops_per_s=%.0f shrunk=%" PRIu64
         " seconds=%.3f%s %s\n",
         ops, ops ? double(hits) / double(ops) : 0.0, double(ops) / secs, g_cache.shrunk(), secs,
         threads_note, ok ? "ok" : "CORRUPTION");
  return ok ? 0 : 1;
}

}  // namespace

BLIMP_APP(kvcache, "kvcache",
          "key-value cache with a shrinker; reports hit rate and throughput (keys=, duration=)",
          kvcache_main);
