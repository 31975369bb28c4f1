// A fake virtio-balloon device (virtio-mmio, version 2) for the driver tests: the register file
// of tests/unit/drivers/fake_transport.h behind the real MmioTransport, plus the device side of
// every balloon queue (tests/unit/drivers/fake_ring.h), processed as QEMU does:
//
//   inflate   PFN array: the pages are discarded (poisoned here) and counted as ballooned
//   deflate   PFN array: the pages leave the balloon
//   stats     held until the test asks for fresh numbers (request_stats())
//   hint      the command word (device-readable, 4 bytes), then device-writable free ranges
//             (discarded: poisoned)
//   reporting device-writable free ranges (discarded: poisoned)
//   blimpq    header + entries (device-readable), response (device-writable, 16 bytes)
//
// Each queue is scriptable per buffer (Behaviour: complete now, after T ns of fake time, never,
// stale: never, but its side effect still happens T ns after the driver reset the device, a
// bogus used id, a used length beyond the buffer, a completion pushed on another queue, a short
// blimpq response). The host side can reset the device (status reads 0), set DEVICE_NEEDS_RESET,
// or refuse to complete a reset (status never reads 0 again).
//
// The fake checks the ownership rule itself: whenever it touches a page (discard, or a buffer it
// holds, on check_held()), that page must be the balloon's (inflate, deflate with
// MUST_TELL_HOST) or isolated (reporting, hinting); the device-readable bytes of a buffer must not
// change while the device holds it. Violations are collected in `violations`.
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../drivers/fake_ring.h"
#include "../drivers/fake_transport.h"
#include "drivers/balloon/balloon_protocol.h"
#include "drivers/virtio/mmio_transport.h"
#include "mm/mm.h"

namespace blimp::balloon::test {

using virtio::test::Chain;
using virtio::test::FakeDeviceState;
using virtio::test::FakeMmio;
using virtio::test::FakeRing;

enum class QueueKind { Inflate, Deflate, Stats, Hint, Report, Blimp, None };

inline const char* kind_name(QueueKind k) {
  switch (k) {
    case QueueKind::Inflate: return "inflate";
    case QueueKind::Deflate: return "deflate";
    case QueueKind::Stats: return "stats";
    case QueueKind::Hint: return "hint";
    case QueueKind::Report: return "report";
    case QueueKind::Blimp: return "blimpq";
    case QueueKind::None: break;
  }
  return "none";
}

struct Behaviour {
  enum Kind { Now, After, Never, Stale, BogusId, LongLen, WrongQueue, ShortLen } kind = Now;
  uint64_t ns = 0;                    // After: delay; Stale: delay after the reset
  QueueKind other = QueueKind::None;  // WrongQueue: where the completion is pushed
  static Behaviour now() { return {}; }
  static Behaviour after(uint64_t ns) { return {After, ns}; }
  static Behaviour never() { return {Never}; }
  static Behaviour stale(uint64_t ns) { return {Stale, ns}; }
  static Behaviour bogus_id() { return {BogusId}; }
  static Behaviour long_len() { return {LongLen}; }
  static Behaviour short_len() { return {ShortLen}; }
  static Behaviour wrong_queue(QueueKind k) { return {WrongQueue, 0, k}; }
};

constexpr uint64_t kPage = 4096;
constexpr uint8_t kPoison = 0xd5;

class FakeBalloonDevice final : public virtio::RegisterWindow {
 public:
  explicit FakeBalloonDevice(uint64_t features) : mmio_(st_, 2) {
    st_.device_id = kDeviceId;
    st_.features = features;
    st_.num_queues = 6;
    for (auto& q : st_.q) q.num_max = 256;
  }

  // ---- Script
  // ------------------------------------------------------------------------------------ The next
  // buffers popped from `k` behave as listed, in order; then `defaults[k]`.
  void script(QueueKind k, std::vector<Behaviour> b) {
    for (auto& x : b) q(k).script.push_back(x);
  }
  void set_default(QueueKind k, Behaviour b) { q(k).fallback = b; }
  bool reset_stuck = false;  // a reset never completes: status never reads 0 again
  // A device restored from a snapshot taken while it polled `k` (QEMU 7.2's free page hint
  // thread): NO_NOTIFY stays set in the ring and nothing polls, so the queue takes no buffer
  // until the driver notifies it anyway. `after`: once it has taken that many more buffers.
  void stop_polling(QueueKind k, unsigned after = 0) {
    Queue& qq = q(k);
    qq.sleep_after = after;
    if (!after) fall_asleep(qq);
  }
  unsigned wakeups = 0;  // notifications that woke a sleeping queue
  uint32_t blimp_status = kBlimpOk;

  // ---- Host side
  // -------------------------------------------------------------------------------------
  void set_target(uint32_t pages) { st_.config_write(kConfigNumPages, 4, pages); }
  uint32_t config_actual() { return st_.config_read(kConfigActual, 4); }
  void set_hint_cmd(uint32_t id) { st_.config_write(kConfigFreePageHintCmdId, 4, id); }
  void raise_config() { st_.isr |= virtio::kIsrConfig; }
  // The host resets the device (QEMU system_reset of the device): status reads 0.
  void host_reset() {
    forget_rings(/*by_driver=*/false);
    st_.status = 0;
    for (auto& qq : st_.q) qq.ready = 0;
  }
  void needs_reset() {
    st_.status |= virtio::status::kDeviceNeedsReset;
    stopped_ = true;
    st_.isr |= virtio::kIsrConfig;
  }
  // QEMU's stats timer: returns the held stats buffer.
  bool request_stats() {
    Queue& s = q(QueueKind::Stats);
    for (auto& h : s.held)
      if (h.due == kNever) {
        h.due = 0;
        return true;
      }
    return false;
  }
  uint8_t status() const { return st_.status; }
  bool irq_pending() const { return st_.isr != 0; }

  // ---- Device processing
  // ------------------------------------------------------------------------------- Takes every
  // newly available buffer, and completes those that are due (now: fake time).
  void pump(uint64_t now) {
    now_ = now;
    for (int i = 0; i < 6; ++i) {
      Queue& qq = queues_[i];
      if (!qq.ring || stopped_) continue;
      while (!qq.asleep) {
        auto c = qq.ring->pop_avail();
        if (!c) break;
        take(qq, std::move(*c));
        if (qq.sleep_after && --qq.sleep_after == 0) fall_asleep(qq);
      }
    }
    for (int i = 0; i < 6; ++i) {
      Queue& qq = queues_[i];
      if (!qq.ring || stopped_) continue;
      for (size_t j = 0; j < qq.held.size();) {
        if (qq.held[j].due <= now) {
          Held h = std::move(qq.held[j]);
          qq.held.erase(qq.held.begin() + long(j));
          complete(qq, h);
          j = 0;
        } else {
          ++j;
        }
      }
    }
    // Work a reset did not cancel (a host that ignores resets): the side effects happen anyway.
    for (size_t j = 0; j < stale_.size();) {
      if (stale_[j].due <= now) {
        Held h = std::move(stale_[j]);
        stale_.erase(stale_.begin() + long(j));
        side_effect(h, /*stale=*/true);
        stale_done++;
      } else {
        ++j;
      }
    }
  }

  // The ownership rule for every buffer the device holds (or will still act on): its pages are
  // the balloon's or isolated, and its device-readable bytes are unchanged.
  void check_held(const char* when) {
    for (auto& qq : queues_)
      for (auto& h : qq.held) check_buffer(h, when);
    for (auto& h : stale_) check_buffer(h, when, true);
  }
  // A lost device (its reset never completed) that finally acts on everything it holds.
  void finish_held() {
    for (auto& qq : queues_)
      for (auto& h : qq.held) h.due = 0;
  }
  size_t held(QueueKind k) { return q(k).held.size(); }
  std::string describe() {
    std::string s;
    for (int i = 0; i < 6; ++i) {
      s += kind_name(queues_[i].kind);
      s += ":" + std::to_string(queues_[i].held.size()) + "/" + std::to_string(completed[i]) + "/" +
           std::to_string(int(queues_[i].fallback.kind)) + (queues_[i].ring ? "r " : "- ");
    }
    return s;
  }
  size_t held_total() {
    size_t n = stale_.size();
    for (auto& qq : queues_) n += qq.held.size();
    return n;
  }
  size_t stale_pending() const { return stale_.size(); }

  // What the device acknowledged: PFNs in the balloon (forgotten on reset: the driver tells the
  // new device again), hint command words, blimpq requests, buffers per queue.
  std::set<uint64_t> balloon_pfns;
  std::vector<uint32_t> hint_words;
  std::vector<uint16_t> blimp_types;
  uint64_t completed[6] = {};
  uint64_t reported_pages = 0, hinted_pages = 0, stale_done = 0;
  unsigned resets_seen = 0;  // status 0 written by the driver
  std::vector<std::string> violations;

  // ---- RegisterWindow: FakeMmio, with the status register and notifies intercepted
  // ----------------
  uint8_t read8(uint32_t off) override { return mmio_.read8(off); }
  uint16_t read16(uint32_t off) override { return mmio_.read16(off); }
  uint32_t read32(uint32_t off) override { return mmio_.read32(off); }
  void write8(uint32_t off, uint8_t v) override { mmio_.write8(off, v); }
  void write16(uint32_t off, uint16_t v) override { mmio_.write16(off, v); }
  void write32(uint32_t off, uint32_t v) override {
    using namespace virtio::mmio_reg;
    if (off == kStatus) {
      if (v == 0) {
        resets_seen++;
        if (reset_stuck) return;  // the device keeps its rings, and its buffers
        forget_rings(/*by_driver=*/true);
        stopped_ = false;
      }
      uint8_t before = st_.status;
      mmio_.write32(off, v);
      if ((v & virtio::status::kDriverOk) && !(before & virtio::status::kDriverOk)) attach_rings();
      return;
    }
    if (off == kQueueNotify && v < 6 && queues_[v].asleep) {
      queues_[v].asleep = false;
      if (queues_[v].ring) queues_[v].ring->set_no_notify(false);
      wakeups++;
    }
    mmio_.write32(off, v);
  }

 private:
  static constexpr uint64_t kNever = ~0ull;
  struct Held {
    QueueKind kind;
    Chain chain;
    uint64_t due;
    Behaviour b;
    std::vector<std::vector<uint8_t>> readable;  // snapshot of each device-readable segment
  };
  struct Queue {
    QueueKind kind = QueueKind::None;
    std::unique_ptr<FakeRing> ring;
    std::deque<Held> held;
    std::deque<Behaviour> script;
    Behaviour fallback;
    bool asleep = false;  // stop_polling()
    unsigned sleep_after = 0;
  };
  void fall_asleep(Queue& qq) {
    qq.asleep = true;
    if (qq.ring) qq.ring->set_no_notify(true);
  }

  Queue& q(QueueKind k) {
    for (auto& qq : queues_)
      if (qq.kind == k) return qq;
    return queues_[6];  // a queue not negotiated: a sink
  }
  bool negotiated(unsigned b) const { return (st_.driver_features >> b) & 1; }

  // DRIVER_OK: the queues as the driver numbered them (densely, by negotiated feature).
  void attach_rings() {
    QueueKind order[6];
    int n = 0;
    order[n++] = QueueKind::Inflate;
    order[n++] = QueueKind::Deflate;
    if (negotiated(kFeatureStatsVq)) order[n++] = QueueKind::Stats;
    if (negotiated(kFeatureFreePageHint)) order[n++] = QueueKind::Hint;
    if (negotiated(kFeaturePageReporting)) order[n++] = QueueKind::Report;
    if (negotiated(kFeatureBlimpPageStates) || negotiated(kFeatureBlimpShareHints))
      order[n++] = QueueKind::Blimp;
    for (int i = 0; i < 6; ++i) {
      Queue& qq = queues_[i];
      QueueKind k = i < n ? order[i] : QueueKind::None;
      if (qq.kind != k) {  // keep scripts across resets, but only for the same queue
        qq.script.clear();
        qq.fallback = {};
      }
      qq.kind = k;
      auto& fq = st_.q[i];
      qq.ring.reset();
      if (i < n && fq.ready)
        qq.ring =
            std::make_unique<FakeRing>(fq.desc, fq.driver, fq.device, uint16_t(fq.num), false);
    }
    if (negotiated(kFeatureStatsVq)) queues_[2].fallback = Behaviour::never();
  }

  // A reset: the device drops its rings and every buffer on them, except work it does not cancel.
  void forget_rings(bool by_driver) {
    for (auto& qq : queues_) {
      for (auto& h : qq.held)
        if (h.b.kind == Behaviour::Stale && by_driver) {
          h.due = now_ + h.b.ns;
          stale_.push_back(std::move(h));
        }
      qq.held.clear();
      qq.ring.reset();
      qq.asleep = false;
      qq.sleep_after = 0;
    }
    balloon_pfns.clear();
  }

  void take(Queue& qq, Chain c) {
    Held h{qq.kind, std::move(c), 0, qq.fallback, {}};
    if (!qq.script.empty()) {
      h.b = qq.script.front();
      qq.script.pop_front();
    }
    for (auto& s : h.chain.segs)
      if (!s.write) {
        auto* p = reinterpret_cast<const uint8_t*>(s.addr);
        h.readable.emplace_back(p, p + s.len);
      }
    switch (h.b.kind) {
      case Behaviour::After: h.due = now_ + h.b.ns; break;
      case Behaviour::Never:
      case Behaviour::Stale: h.due = kNever; break;
      default: h.due = now_; break;
    }
    check_buffer(h, "when the device took it");
    qq.held.push_back(std::move(h));
  }

  // Pages a buffer names, and the owner they must have while the device holds it.
  void pages_of(const Held& h, std::vector<uint64_t>& out, mm::Owner& want, bool& checked) const {
    checked = true;
    switch (h.kind) {
      case QueueKind::Inflate:
      case QueueKind::Deflate: {
        want = mm::Owner::Balloon;
        // Without MUST_TELL_HOST the guest may reuse deflated pages before telling (5.5.6.2).
        if (h.kind == QueueKind::Deflate && !negotiated(kFeatureMustTellHost)) checked = false;
        // The PFNs as the device read them when it took the buffer.
        if (h.readable.empty()) break;
        const auto& bytes = h.readable[0];
        for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
          uint32_t pfn;
          std::memcpy(&pfn, bytes.data() + i, 4);
          out.push_back(uint64_t(pfn) * kPage);
        }
        break;
      }
      case QueueKind::Hint:
      case QueueKind::Report:
        want = mm::Owner::Isolated;
        for (auto& s : h.chain.segs)
          if (s.write)
            for (uint64_t a = s.addr; a < s.addr + s.len; a += kPage) out.push_back(a);
        break;
      default: checked = false;
    }
  }

  void violation(const Held& h, const std::string& what) {
    if (violations.size() < 50)
      violations.push_back(std::string(kind_name(h.kind)) + " buffer: " + what);
  }

  // `after_reset`: a buffer acted on after the device was reset (a host that does not cancel
  // work on reset). The driver may have reused its memory by then (the reset took it back), but
  // it must not have handed its pages to anyone: they are the balloon's, isolated or free.
  void check_buffer(const Held& h, const char* when, bool after_reset = false) {
    std::vector<uint64_t> pages;
    mm::Owner want{};
    bool checked;
    pages_of(h, pages, want, checked);
    if (checked) {
      for (uint64_t a : pages) {
        mm::Owner o = mm::pages().owner_of(a);
        bool ok = o == want;
        if (after_reset)
          ok = o == mm::Owner::Balloon || o == mm::Owner::Isolated || mm::is_free_owner(o);
        if (!ok) {
          char buf[200];
          snprintf(buf, sizeof buf, "page %#lx is %s, not %s, %s", a, mm::owner_name(o),
                   mm::owner_name(want), when);
          violation(h, buf);
          break;
        }
      }
    }
    size_t r = 0;
    if (after_reset) return;  // its buffers were the driver's again after the reset
    for (auto& s : h.chain.segs) {
      if (s.write) continue;
      if (std::memcmp(reinterpret_cast<const void*>(s.addr), h.readable[r].data(), s.len) != 0)
        violation(h, std::string("the driver rewrote device-readable bytes ") + when);
      ++r;
    }
  }

  // What the device does with a buffer: the same whether it then returns it or (stale) not.
  void side_effect(Held& h, bool stale) {
    check_buffer(
        h, stale ? "when a stale buffer was acted on after a reset" : "when the device acted on it",
        stale);
    std::vector<uint64_t> pages;
    mm::Owner want{};
    bool checked;
    pages_of(h, pages, want, checked);
    switch (h.kind) {
      case QueueKind::Inflate:
        for (uint64_t a : pages) {
          std::memset(reinterpret_cast<void*>(a), kPoison, kPage);  // discarded
          if (!stale) balloon_pfns.insert(a / kPage);
        }
        break;
      case QueueKind::Deflate:
        if (!stale)
          for (uint64_t a : pages) balloon_pfns.erase(a / kPage);
        break;
      case QueueKind::Report:
      case QueueKind::Hint:
        for (uint64_t a : pages) std::memset(reinterpret_cast<void*>(a), kPoison, kPage);
        if (h.kind == QueueKind::Report)
          reported_pages += pages.size();
        else
          hinted_pages += pages.size();
        if (h.kind == QueueKind::Hint && pages.empty() && !h.readable.empty() &&
            h.readable[0].size() == 4) {
          uint32_t w;
          std::memcpy(&w, h.readable[0].data(), 4);
          hint_words.push_back(w);
        }
        break;
      case QueueKind::Blimp: {
        BlimpRequestHeader hdr{};
        if (!h.readable.empty() && h.readable[0].size() >= sizeof hdr)
          std::memcpy(&hdr, h.readable[0].data(), sizeof hdr);
        blimp_types.push_back(hdr.type);
        for (auto& s : h.chain.segs)
          if (s.write && s.len >= sizeof(BlimpResponse) && !stale) {
            BlimpResponse r{blimp_status, hdr.count, 0, 0};
            std::memcpy(reinterpret_cast<void*>(s.addr), &r, sizeof r);
          }
        break;
      }
      default: break;
    }
  }

  void complete(Queue& qq, Held& h) {
    side_effect(h, false);
    uint32_t len = 0;
    if (h.kind == QueueKind::Blimp) len = sizeof(BlimpResponse);
    uint32_t id = h.chain.head;
    Queue* target = &qq;
    switch (h.b.kind) {
      case Behaviour::BogusId: id = 0xffff; break;
      case Behaviour::LongLen: len = h.chain.writable() + 4096; break;
      case Behaviour::ShortLen: len = 4; break;
      case Behaviour::WrongQueue: target = &q(h.b.other); break;
      default: break;
    }
    if (!target->ring) return;
    target->ring->push_used(id, len);
    completed[&qq - queues_]++;
    st_.isr |= virtio::kIsrQueue;
  }

  FakeDeviceState st_;
  FakeMmio mmio_;
  Queue queues_[7];  // [6]: sink for queues not negotiated
  std::vector<Held> stale_;
  uint64_t now_ = 0;
  bool stopped_ = false;  // DEVICE_NEEDS_RESET: processes nothing until reset
};

}  // namespace blimp::balloon::test
