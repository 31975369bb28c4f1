// app=kvcache: a key-value cache whose values are expensive to recompute, registered as a
// shrinker. It grows into whatever memory is free; under pressure (an allocation failing, the
// balloon wanting memory) the allocator asks it to shrink and it drops its coldest entries.
// It reports hit rate and throughput, so hosts can see what overcommit costs the app.
//
//   kvcache [keys=200000] [duration=10s] [ops=0] [report=1s] [work=2000] [max=0] [seed=1]
//
// keys      size of the key space (one 4 KiB value per key)
// ops       stop after this many requests (0: no limit; duration= still applies, so a fixed
//           amount of work for a benchmark is ops=N with a long enough duration=)
// work      extra mixing rounds per recompute: the cost of a miss
// max       cap on cached values (0: as much as memory allows)
// Requests are skewed (the square of a uniform variable), so a cache of a fraction of the key
// space catches most of them. Every hit is verified against the recomputed content's checksum;
// a mismatch is corruption and fails the app.
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
#include "kernel/power.h"
#include "kernel/timer.h"
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

  // Returns false on corruption.
  bool get(uint64_t key, bool& hit) {
    Entry* e = lookup(key);
    if (e) {
      hit = true;
      touch(e);
      uint64_t sum = 0;
      for (int i = 0; i < 512; i += 64) sum += e->value[i];
      if (sum != e->checksum) {
        printf("kvcache: CORRUPTION: key %" PRIu64 " value at %p\n", key, e->value);
        return false;
      }
      return true;
    }
    hit = false;
    insert(key);
    return true;
  }

  size_t count_objects() override { return entries_; }

  size_t scan_objects(size_t nr_pages) override {
    size_t freed = 0;
    while (freed < nr_pages && lru_tail_) {
      evict(lru_tail_);
      freed++;
    }
    shrunk_ += freed;
    return freed;
  }

  uint64_t entries() const { return entries_; }
  uint64_t shrunk() const { return shrunk_; }

 private:
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
    if (max_entries_ && entries_ >= max_entries_) evict(lru_tail_);
    auto* e = static_cast<Entry*>(malloc(sizeof(Entry)));
    if (!e) return;
    // The allocation itself may shrink us (through the allocator's reclaim path).
    auto page = mm::pages().alloc_pages(0, mm::Owner::App);
    if (page.is_error()) {
      free(e);
      return;
    }
    e->value = phys_to_virt<uint64_t>(page.value());
    e->key = key;
    compute(key, e->value, e->checksum);
    Entry*& bucket = table_[key & (buckets_ - 1)];
    e->hash_next = bucket;
    bucket = e;
    e->lru_prev = nullptr;
    e->lru_next = lru_head_;
    if (lru_head_) lru_head_->lru_prev = e;
    lru_head_ = e;
    if (!lru_tail_) lru_tail_ = e;
    entries_++;
  }

  void touch(Entry* e) {
    if (e == lru_head_) return;
    unlink_lru(e);
    e->lru_prev = nullptr;
    e->lru_next = lru_head_;
    if (lru_head_) lru_head_->lru_prev = e;
    lru_head_ = e;
    if (!lru_tail_) lru_tail_ = e;
  }

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

  void evict(Entry* e) {
    if (!e) return;
    unlink_lru(e);
    Entry** p = &table_[e->key & (buckets_ - 1)];
    while (*p != e) p = &(*p)->hash_next;
    *p = e->hash_next;
    mm::pages().free_pages(virt_to_phys(e->value), 0);
    free(e);
    entries_--;
  }

  uint64_t keys_ = 0, work_ = 0, max_entries_ = 0, buckets_ = 0;
  Entry** table_ = nullptr;
  Entry* lru_head_ = nullptr;
  Entry* lru_tail_ = nullptr;
  uint64_t entries_ = 0, shrunk_ = 0;
};

KvCache g_cache;

int kvcache_main(int argc, char** argv) {
  uint64_t keys = 200000, duration = 10000000000ull, report = 1000000000ull, work = 2000, max = 0,
           seed = 1, max_ops = 0;
  if (!app_args::get_u64("kvcache", argc, argv, "keys", keys) ||
      !app_args::get_duration("kvcache", argc, argv, "duration", duration) ||
      !app_args::get_duration("kvcache", argc, argv, "report", report) ||
      !app_args::get_u64("kvcache", argc, argv, "work", work) ||
      !app_args::get_u64("kvcache", argc, argv, "max", max) ||
      !app_args::get_u64("kvcache", argc, argv, "seed", seed) ||
      !app_args::get_u64("kvcache", argc, argv, "ops", max_ops))
    return 2;
  if (keys == 0 || report == 0) {
    printf("kvcache: keys and report must be positive\n");
    return 2;
  }
  if (!g_cache.init(keys, work, max)) {
    printf("kvcache: out of memory for the hash table\n");
    return 1;
  }
  mm::pages().register_shrinker(&g_cache);
  uint64_t start = timer::now_ns(), next_report = start + report;
  uint64_t ops = 0, hits = 0, last_ops = 0, last_hits = 0, last_t = start, rng = seed;
  bool ok = true;
  printf("kvcache: started, %" PRIu64 " keys\n", keys);
  bool ops_done = false;
  while (ok && !ops_done) {
    for (int i = 0; i < 64; i++) {
      rng = mix64(rng);
      double u = double(rng >> 11) * (1.0 / 9007199254740992.0);
      uint64_t key = uint64_t(u * u * double(keys));
      bool hit;
      ok = g_cache.get(key, hit);
      if (!ok) break;
      ops++;
      hits += hit;
      if (max_ops && ops >= max_ops) {
        ops_done = true;
        break;
      }
    }
    // Between requests the cache is consistent: a safe point for the balloon to shrink it (a
    // warm cache that no longer allocates would otherwise never give the balloon anything).
    mm::pages().reclaim_point();
    if (power::stop_requested()) {
      printf("kvcache: stop requested\n");
      break;
    }
    uint64_t now = timer::now_ns();
    if (now >= next_report || now - start >= duration || ops_done) {
      uint64_t d_ops = ops - last_ops, d_hits = hits - last_hits;
      double secs = double(now - last_t) / 1e9;
      printf("kvcache: t=%.1f ops=%" PRIu64 " hits=%" PRIu64
             " hit_rate=%.3f ops_per_s=%.0f "
             "entries=%" PRIu64 " cache_mib=%" PRIu64 " shrunk=%" PRIu64 "\n",
             double(now - start) / 1e9, d_ops, d_hits, d_ops ? double(d_hits) / double(d_ops) : 0.0,
             double(d_ops) / secs, g_cache.entries(), (g_cache.entries() * 4096) >> 20,
             g_cache.shrunk());
      last_ops = ops;
      last_hits = hits;
      last_t = now;
      next_report += report;
      if (now - start >= duration || ops_done) break;
    }
  }
  mm::pages().unregister_shrinker(&g_cache);
  double secs = double(timer::now_ns() - start) / 1e9;
  printf("kvcache: done ops=%" PRIu64 " hit_rate=%.3f ops_per_s=%.0f shrunk=%" PRIu64
         " seconds=%.3f %s\n",
         ops, ops ? double(hits) / double(ops) : 0.0, double(ops) / secs, g_cache.shrunk(), secs,
         ok ? "ok" : "CORRUPTION");
  return ok ? 0 : 1;
}

}  // namespace

BLIMP_APP(kvcache, "kvcache",
          "key-value cache with a shrinker; reports hit rate and throughput (keys=, duration=)",
          kvcache_main);
