#include "mm/bench.h"

#include "kernel/console.h"

namespace blimp::mm {

namespace {

AllocBenchFigures measure(PageAllocator& pa, BenchClock now_ns, unsigned rounds, size_t batch,
                          unsigned order, PhysAddr* scratch) {
  AllocBenchFigures f = {};
  f.order = order;
  uint64_t limit = pa.free_pages_count() / pages_of_order(order) / 4;
  size_t n = batch < limit ? batch : static_cast<size_t>(limit);
  for (unsigned r = 0; r < rounds; ++r) {
    size_t got = 0;
    uint64_t t0 = now_ns();
    for (; got < n; ++got) {
      auto a = pa.alloc_pages(order, Owner::App, kAllocNoReclaim);
      if (a.is_error()) break;
      scratch[got] = a.value();
    }
    uint64_t t1 = now_ns();
    for (size_t i = 0; i < got; ++i) pa.free_pages(scratch[i], order);
    uint64_t t2 = now_ns();
    f.ops += got;
    f.alloc_ns += t1 - t0;
    f.free_ns += t2 - t1;
  }
  uint64_t pairs = static_cast<uint64_t>(rounds) * n;
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < pairs; ++i) {
    auto a = pa.alloc_pages(order, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    pa.free_pages(a.value(), order);
    ++f.pair_ops;
  }
  f.pair_ns = now_ns() - t0;
  return f;
}

void print_one(const char* what, const AllocBenchFigures& f) {
  // Tenths of a nanosecond: kprintf has no floating point.
  auto per_op = [](uint64_t ns, uint64_t ops) { return ops ? ns * 10 / ops : 0; };
  auto kops_s = [](uint64_t ns, uint64_t ops) { return ns ? ops * 1000000ull / ns : 0; };
  uint64_t a = per_op(f.alloc_ns, f.ops), fr = per_op(f.free_ns, f.ops),
           p = per_op(f.pair_ns, f.pair_ops);
  kprintf(
      "mm bench %s: %llu blocks: alloc %llu.%llu ns (%llu k/s), free %llu.%llu ns (%llu k/s), "
      "alloc+free pair %llu.%llu ns\n",
      what, (unsigned long long)f.ops, (unsigned long long)(a / 10), (unsigned long long)(a % 10),
      (unsigned long long)kops_s(f.alloc_ns, f.ops), (unsigned long long)(fr / 10),
      (unsigned long long)(fr % 10), (unsigned long long)kops_s(f.free_ns, f.ops),
      (unsigned long long)(p / 10), (unsigned long long)(p % 10));
}

}  // namespace

AllocBenchResult run_alloc_benchmark(PageAllocator& pa, BenchClock now_ns, unsigned rounds,
                                     size_t batch) {
  AllocBenchResult r = {};
  uint64_t scratch_pages = (batch * sizeof(PhysAddr) + kPageSize - 1) / kPageSize;
  auto s = pa.alloc_run(scratch_pages, Owner::Kernel, kAllocNoReclaim);
  if (s.is_error()) return r;
  PhysAddr* scratch = phys_to_virt<PhysAddr>(s.value());
  r.single = measure(pa, now_ns, rounds, batch, 0, scratch);
  r.huge = measure(pa, now_ns, rounds, batch, 9, scratch);
  pa.free_run(s.value(), scratch_pages);
  r.ok = true;
  return r;
}

AllocWorkerFigures run_alloc_worker(PageAllocator& pa, BenchClock now_ns, unsigned order,
                                    size_t batch, PhysAddr* scratch, uint64_t worker,
                                    uint64_t end_ns) {
  AllocWorkerFigures f = {};
  const uint64_t last_word = pages_of_order(order) * kPageSize / sizeof(uint64_t) - 1;
  // The worker in the top byte, the sequence below it, the address XORed over both: two workers
  // never write the same tag into the same block, and neither does one worker twice in a row.
  const uint64_t salt = worker << 56;
  uint64_t seq = 0;
  f.start_ns = now_ns();
  uint64_t now = f.start_ns;
  while (now < end_ns) {
    const uint64_t first_seq = seq;
    size_t got = 0;
    for (; got < batch; ++got) {
      auto a = pa.alloc_pages(order, Owner::App, kAllocNoReclaim);
      if (a.is_error()) {
        ++f.failed;
        break;
      }
      scratch[got] = a.value();
      uint64_t tag = salt ^ (seq++ << 12) ^ a.value();
      auto* w = phys_to_virt<volatile uint64_t>(a.value());
      w[0] = tag;
      w[last_word] = ~tag;
    }
    for (size_t i = 0; i < got; ++i) {
      uint64_t tag = salt ^ ((first_seq + i) << 12) ^ scratch[i];
      auto* w = phys_to_virt<volatile uint64_t>(scratch[i]);
      if (w[0] != tag || w[last_word] != ~tag) {
        if (!f.bad_tags) f.first_bad = scratch[i];
        ++f.bad_tags;
      }
      pa.free_pages(scratch[i], order);
    }
    f.ops += got;
    now = now_ns();
    if (!got) break;
  }
  f.end_ns = now;
  return f;
}

void print_alloc_benchmark(const AllocBenchResult& r) {
  if (!r.ok) {
    kprintf("mm bench: no memory for the scratch array\n");
    return;
  }
  print_one("4 KiB", r.single);
  print_one("2 MiB", r.huge);
}

}  // namespace blimp::mm
