#include "kernel/acpi_madt.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace {

using blimp::Error;
using blimp::acpi::MadtCpus;
using blimp::acpi::parse_madt_cpus;

// Builds a MADT the way firmware lays it out: header, LAPIC address, flags, then entries. The
// length field is fixed up by bytes() unless a test overrides it; the checksum is not checked
// by the parser (acpi.cpp does that before any parsing).
class Madt {
 public:
  Madt() : b_(44, 0) {
    memcpy(b_.data(), "APIC", 4);
    put32(36, 0xfee00000);
  }
  Madt& lapic(uint8_t uid, uint8_t apic_id, uint32_t flags) {
    size_t o = b_.size();
    b_.resize(o + 8);
    b_[o] = 0;
    b_[o + 1] = 8;
    b_[o + 2] = uid;
    b_[o + 3] = apic_id;
    put32(o + 4, flags);
    return *this;
  }
  Madt& x2apic(uint32_t apic_id, uint32_t flags, uint32_t uid) {
    size_t o = b_.size();
    b_.resize(o + 16);
    b_[o] = 9;
    b_[o + 1] = 16;
    put32(o + 4, apic_id);
    put32(o + 8, flags);
    put32(o + 12, uid);
    return *this;
  }
  Madt& raw(std::vector<uint8_t> entry) {
    b_.insert(b_.end(), entry.begin(), entry.end());
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out = b_;
    uint32_t len = static_cast<uint32_t>(out.size());
    memcpy(out.data() + 4, &len, 4);
    return out;
  }

 private:
  void put32(size_t o, uint32_t v) { memcpy(b_.data() + o, &v, 4); }
  std::vector<uint8_t> b_;
};

// Parses from an exact-size heap copy, so that ASan catches any read past the table.
blimp::ErrorOr<MadtCpus> parse(const std::vector<uint8_t>& t, uint32_t bsp, const char*& why) {
  auto* copy = new uint8_t[t.size() ? t.size() : 1];
  if (!t.empty()) memcpy(copy, t.data(), t.size());
  auto r = parse_madt_cpus(copy, t.size(), bsp, why);
  delete[] copy;
  return r;
}

Error parse_error(const std::vector<uint8_t>& t, uint32_t bsp = 0) {
  const char* why = nullptr;
  auto r = parse(t, bsp, why);
  EXPECT_TRUE(r.is_error());
  if (!r.is_error()) return Error{};
  EXPECT_NE(why, nullptr);
  return r.error();
}

TEST(MadtCpus, QemuFourCpusWithIoApicAndOverrides) {
  // QEMU's pc/q35 layout: LAPIC entries, an I/O APIC (type 1, 12 bytes), overrides (type 2,
  // 10 bytes), a LAPIC NMI (type 4, 6 bytes).
  auto t = Madt()
               .lapic(0, 0, 1)
               .lapic(1, 1, 1)
               .lapic(2, 2, 1)
               .lapic(3, 3, 1)
               .raw({1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0})
               .raw({2, 10, 0, 0, 2, 0, 0, 0, 0, 0})
               .raw({4, 6, 0xff, 0, 0, 1})
               .bytes();
  const char* why = nullptr;
  auto r = parse(t, 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  ASSERT_EQ(r.value().count, 4u);
  for (uint32_t i = 0; i < 4; i++) {
    EXPECT_EQ(r.value().cpus[i].apic_id, i);
    EXPECT_EQ(r.value().cpus[i].acpi_uid, i);
  }
  EXPECT_EQ(r.value().not_enabled, 0u);
}

TEST(MadtCpus, BootstrapProcessorComesFirst) {
  auto t = Madt().lapic(0, 4, 1).lapic(1, 7, 1).lapic(2, 9, 1).bytes();
  const char* why = nullptr;
  auto r = parse(t, 7, why);
  ASSERT_FALSE(r.is_error()) << why;
  ASSERT_EQ(r.value().count, 3u);
  EXPECT_EQ(r.value().cpus[0].apic_id, 7u);
  EXPECT_EQ(r.value().cpus[1].apic_id, 4u);
  EXPECT_EQ(r.value().cpus[2].apic_id, 9u);
}

TEST(MadtCpus, DisabledAndOnlineCapableEntriesAreNotStarted) {
  // -smp 2,maxcpus=4: the two absent CPUs are listed with flags 0; ACPI 6.3's online-capable
  // bit alone (bit 1) does not make a processor enabled either.
  auto t = Madt().lapic(0, 0, 1).lapic(1, 1, 1).lapic(2, 2, 0).lapic(3, 3, 2).bytes();
  const char* why = nullptr;
  auto r = parse(t, 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  EXPECT_EQ(r.value().count, 2u);
  EXPECT_EQ(r.value().not_enabled, 2u);
}

TEST(MadtCpus, X2ApicEntries) {
  auto t = Madt().lapic(0, 0, 1).x2apic(300, 1, 0x1234).x2apic(301, 0, 5).bytes();
  const char* why = nullptr;
  auto r = parse(t, 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  ASSERT_EQ(r.value().count, 2u);
  EXPECT_EQ(r.value().cpus[1].apic_id, 300u);
  EXPECT_EQ(r.value().cpus[1].acpi_uid, 0x1234u);
  EXPECT_EQ(r.value().not_enabled, 1u);
}

TEST(MadtCpus, UnknownEntryTypesAreSkippedByTheirLength) {
  auto t = Madt().raw({0x7f, 5, 1, 2, 3}).lapic(0, 0, 1).raw({0x80, 2}).bytes();
  const char* why = nullptr;
  auto r = parse(t, 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  EXPECT_EQ(r.value().count, 1u);
}

TEST(MadtCpus, ZeroCpus) {
  EXPECT_EQ(parse_error(Madt().bytes()), Error::NotFound);
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 0).lapic(1, 1, 0).bytes()), Error::NotFound);
}

TEST(MadtCpus, BootstrapProcessorMissing) {
  EXPECT_EQ(parse_error(Madt().lapic(0, 1, 1).lapic(1, 2, 1).bytes(), 0), Error::NotFound);
}

TEST(MadtCpus, MoreThanTheMaximum) {
  Madt m;
  for (uint32_t i = 0; i < MadtCpus::kMax; i++) m.lapic(uint8_t(i), uint8_t(i), 1);
  const char* why = nullptr;
  auto r = parse(m.bytes(), 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  EXPECT_EQ(r.value().count, MadtCpus::kMax);
  m.x2apic(1000, 1, 1000);
  EXPECT_EQ(parse_error(m.bytes()), Error::LimitReached);
  // Disabled entries beyond the maximum are fine: they are never started.
  Madt n;
  for (uint32_t i = 0; i < 200; i++) n.lapic(uint8_t(i), uint8_t(i), i < 4 ? 1 : 0);
  auto r2 = parse(n.bytes(), 0, why);
  ASSERT_FALSE(r2.is_error()) << why;
  EXPECT_EQ(r2.value().count, 4u);
  EXPECT_EQ(r2.value().not_enabled, 196u);
}

TEST(MadtCpus, DuplicateApicIds) {
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).lapic(1, 0, 1).bytes()), Error::InvalidArgument);
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).x2apic(0, 1, 9).bytes()), Error::InvalidArgument);
  // A disabled duplicate is not a processor we would start: tolerated.
  const char* why = nullptr;
  EXPECT_FALSE(parse(Madt().lapic(0, 0, 1).lapic(1, 0, 0).bytes(), 0, why).is_error());
}

TEST(MadtCpus, BroadcastApicId) {
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).lapic(1, 0xff, 1).bytes()), Error::InvalidArgument);
}

TEST(MadtCpus, BadHeaderAndLengths) {
  const char* why = nullptr;
  EXPECT_TRUE(parse_madt_cpus(nullptr, 0, 0, why).is_error());
  auto good = Madt().lapic(0, 0, 1).bytes();
  // Shorter than the header.
  EXPECT_EQ(parse_error(std::vector<uint8_t>(good.begin(), good.begin() + 43)),
            Error::InvalidArgument);
  // Wrong signature.
  auto sig = good;
  sig[0] = 'X';
  EXPECT_EQ(parse_error(sig), Error::InvalidArgument);
  // Length field larger than what may be read, and smaller than the header.
  for (uint32_t len : {uint32_t(good.size() + 1), 0xffffffffu, 43u, 0u}) {
    auto t = good;
    memcpy(t.data() + 4, &len, 4);
    EXPECT_EQ(parse_error(t), Error::InvalidArgument) << len;
  }
  // Length field smaller than the buffer: only `length` bytes are parsed.
  auto t = Madt().lapic(0, 0, 1).bytes();
  t.insert(t.end(), {0, 8, 1, 1, 1, 0, 0, 0});  // an enabled CPU beyond the table's length
  auto r = parse(t, 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  EXPECT_EQ(r.value().count, 1u);
}

TEST(MadtCpus, TruncatedAndMalformedEntries) {
  // Entry length 0 (would loop forever) and 1 (would overlap the next entry).
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).raw({0, 0}).bytes()), Error::InvalidArgument);
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).raw({5, 1, 0}).bytes()), Error::InvalidArgument);
  // An entry header cut by the end of the table.
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).raw({0}).bytes()), Error::InvalidArgument);
  // An entry whose length runs past the end.
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).raw({0, 8, 1, 1}).bytes()), Error::InvalidArgument);
  // Entries shorter than their type's structure.
  EXPECT_EQ(parse_error(Madt().raw({0, 6, 0, 0, 1, 0}).bytes()), Error::InvalidArgument);
  EXPECT_EQ(parse_error(Madt().lapic(0, 0, 1).raw({9, 12, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}).bytes()),
            Error::InvalidArgument);
  // A longer entry than the structure is fine (later revisions may grow it).
  const char* why = nullptr;
  auto r = parse(Madt().raw({0, 10, 0, 0, 1, 0, 0, 0, 0xaa, 0xbb}).bytes(), 0, why);
  ASSERT_FALSE(r.is_error()) << why;
  EXPECT_EQ(r.value().count, 1u);
}

// Fuzz-style: every truncation of a valid table, then random corruptions of it. Whatever the
// outcome, the parser must stay inside the buffer (ASan checks each read) and an accepted table
// must be self-consistent.
TEST(MadtCpus, TruncationsAndRandomCorruptionsStayInBounds) {
  auto good = Madt()
                  .lapic(0, 0, 1)
                  .lapic(1, 1, 1)
                  .raw({1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0})
                  .x2apic(2, 1, 2)
                  .lapic(3, 3, 0)
                  .raw({2, 10, 0, 0, 2, 0, 0, 0, 0, 0})
                  .bytes();
  for (size_t n = 0; n <= good.size(); n++) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + n);
    const char* why = nullptr;
    auto r = parse(cut, 0, why);
    if (n < good.size()) {
      EXPECT_TRUE(r.is_error()) << "accepted a table cut at " << n;
    }
  }
  std::mt19937 rng(17);
  for (int round = 0; round < 20000; round++) {
    auto t = good;
    int flips = 1 + int(rng() % 4);
    for (int f = 0; f < flips; f++) t[rng() % t.size()] = uint8_t(rng());
    if (rng() % 4 == 0) t.resize(rng() % (t.size() + 1));
    const char* why = nullptr;
    auto r = parse(t, 0, why);
    if (r.is_error()) {
      EXPECT_NE(why, nullptr);
      continue;
    }
    const MadtCpus& c = r.value();
    ASSERT_GE(c.count, 1u);
    ASSERT_LE(c.count, MadtCpus::kMax);
    EXPECT_EQ(c.cpus[0].apic_id, 0u);
    for (size_t i = 0; i < c.count; i++)
      for (size_t j = i + 1; j < c.count; j++) EXPECT_NE(c.cpus[i].apic_id, c.cpus[j].apic_id);
  }
}

}  // namespace
