// hangar across hosts: the fleet file's "hosts" and the VMs on them, the policy split per host,
// and libvirt's memory stats as hangar reads them. The libvirt calls themselves run against real
// daemons in tests/integration/test_hangar_libvirt.py.
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>

#include "config.h"
#include "error_text.h"
#include "fleet.h"
#include "host_rounds.h"
#include "libvirt_domain.h"

using namespace hangar;

namespace {

const char* kTwoHosts = R"({
  "hosts": [
    {"name": "a", "uri": "qemu:///system", "budget": "700M"},
    {"name": "b", "uri": "qemu+unix:///session?socket=/run/user/1000/libvirt/libvirt-sock", "budget": "400M"}
  ],
  "budget": "1G",
  "vms": [
    {"name": "blimp1", "host": "a"},
    {"name": "linux1", "host": "a", "domain": "debian-12", "shares": 500},
    {"name": "web", "host": "b", "count": 2},
    {"name": "spawned", "app": "idle"}
  ]
})";

ErrorOr<Config> parsed(const std::string& text) {
  Config c = TRY(parse_config_json(text, "fleet.json"));
  TRY(validate(c));
  return c;
}

}  // namespace

TEST(ConfigHosts, HostsAndTheirVms) {
  Config c = parsed(kTwoHosts).value();
  ASSERT_EQ(c.hosts.size(), 2u);
  EXPECT_EQ(c.hosts[0].name, "a");
  EXPECT_EQ(c.hosts[0].uri, "qemu:///system");
  EXPECT_EQ(c.hosts[0].budget, 700ull << 20);
  EXPECT_EQ(c.hosts[1].budget, 400ull << 20);
  ASSERT_EQ(c.vms.size(), 5u);
  EXPECT_EQ(c.vms[0].host, "a");
  EXPECT_EQ(c.vms[0].domain, "");  // the VM's name
  EXPECT_EQ(c.vms[1].domain, "debian-12");
  EXPECT_EQ(c.vms[2].name, "web1");
  EXPECT_EQ(c.vms[3].name, "web2");
  EXPECT_EQ(c.vms[3].host, "b");
  EXPECT_EQ(c.vms[4].host, "");  // hangar spawns it: the host "local", under "budget"
  EXPECT_EQ(c.budget, 1ull << 30);
  // The --vm grammar takes host= and domain= too (the hosts come from the file).
  VmSpec vm = parse_vm_flag("name=x,host=a,domain=dom-x").value();
  EXPECT_EQ(vm.host, "a");
  EXPECT_EQ(vm.domain, "dom-x");
}

TEST(ConfigHosts, ErrorsNameTheHostAndTheKey) {
  auto err = [](const std::string& hosts, const std::string& vms) {
    return error_text(parsed("{\"hosts\": " + hosts + ", \"vms\": " + vms + "}"));
  };
  const std::string a = R"([{"name": "a", "uri": "qemu:///system"}])";
  const std::string vm_a = R"([{"name": "v", "host": "a"}])";
  EXPECT_EQ(err(a, vm_a), "");
  EXPECT_EQ(err(R"([{"name": "a", "url": "qemu:///system"}])", vm_a),
            "fleet.json: hosts[0]: unknown key \"url\" (did you mean \"uri\"?)");
  EXPECT_EQ(
      err(R"([{"name": "a"}])", vm_a),
      "fleet.json: hosts[0].uri: missing: each host needs a libvirt URI (e.g. qemu:///system)");
  EXPECT_EQ(err(R"([{"name": "a", "uri": "localhost"}])", vm_a),
            "hosts[0] \"a\": \"localhost\" is not a libvirt URI (e.g. qemu:///system, "
            "qemu+ssh://user@host/system)");
  EXPECT_EQ(err(R"([{"name": "a", "uri": "qemu:///system", "budget": "lots"}])", vm_a)
                .rfind("fleet.json: hosts[0].budget: ", 0),
            0u);
  EXPECT_EQ(
      err(R"([{"name": "a", "uri": "qemu:///system"}, {"name": "a", "uri": "qemu:///session"}])",
          vm_a),
      "hosts[1] \"a\": duplicate name");
  EXPECT_EQ(err(R"([{"name": "local", "uri": "qemu:///system"}])", vm_a)
                .rfind("hosts[0] \"local\": \"local\" is", 0),
            0u);
  EXPECT_EQ(err(R"([{"name": "a b", "uri": "qemu:///system"}])", vm_a),
            "hosts[0] \"a b\": a name is 1-32 letters, digits, '-' or '_'");
  EXPECT_EQ(err(a, R"([{"name": "v", "host": "b"}])"),
            "VM \"v\": host \"b\" is not in \"hosts\" (known: a)");
  EXPECT_EQ(err("[]", R"([{"name": "v", "host": "b"}])"),
            "VM \"v\": host \"b\" is not in \"hosts\" (the fleet file has none)");
  EXPECT_EQ(err(a, R"([{"name": "v", "domain": "d"}])"),
            "VM \"v\": \"domain\" names a libvirt domain: give the VM a \"host\" too");
  EXPECT_EQ(err(a, R"([{"name": "v", "host": "a", "domain": "d", "count": 2}])")
                .rfind("fleet.json: vms[0].domain: one domain per VM", 0),
            0u);
  EXPECT_EQ(err(R"({"name": "a"})", vm_a), "fleet.json: hosts: expected a list of hosts");
}

TEST(ConfigHosts, EachBudgetHoldsItsOwnHostsFloors) {
  // Three VMs of 32 MiB floors on host a (96 MiB) and one on b: a's budget must hold 96 MiB, b's
  // 32 MiB; the fleet's "budget" is only for the VMs hangar spawns (none here).
  const std::string vms = R"([{"name": "x", "host": "a", "count": 3}, {"name": "y", "host": "b"}])";
  auto with = [&](const std::string& a, const std::string& b) {
    return error_text(
        parsed(R"({"budget": "16M", "hosts": [{"name": "a", "uri": "qemu:///system", "budget": ")" +
               a + R"("}, {"name": "b", "uri": "qemu:///session", "budget": ")" + b +
               R"("}], "vms": )" + vms + "}"));
  };
  EXPECT_EQ(with("96M", "32M"), "");
  EXPECT_EQ(with("95M", "32M"), "host \"a\": budget 95 MiB is below its VMs' floors (96 MiB)");
  EXPECT_EQ(with("96M", "31M"), "host \"b\": budget 31 MiB is below its VMs' floors (32 MiB)");
}

TEST(HostRounds, OneRoundPerHostWithItsOwnBudget) {
  std::vector<HostSpec> hosts = {{"a", "qemu:///system", 700ull << 20},
                                 {"b", "qemu:///session", 400ull << 20}};
  std::vector<HostMember> m = {
      {"a", 512ull << 20, true, true},      // 0
      {"b", 384ull << 20, true, true},      // 1
      {"a", 256ull << 20, true, true},      // 2
      {"local", 128ull << 20, true, true},  // 3
  };
  auto rounds = host_rounds(hosts, 1ull << 30, m);
  ASSERT_EQ(rounds.size(), 3u);
  EXPECT_EQ(rounds[0].host, "local");
  EXPECT_EQ(rounds[0].budget, 1ull << 30);
  EXPECT_EQ(rounds[0].members, std::vector<size_t>{3});
  EXPECT_EQ(rounds[1].host, "a");
  EXPECT_EQ(rounds[1].budget, 700ull << 20);
  EXPECT_EQ(rounds[1].members, (std::vector<size_t>{0, 2}));
  EXPECT_EQ(rounds[2].host, "b");
  EXPECT_EQ(rounds[2].budget, 400ull << 20);
  EXPECT_EQ(rounds[2].members, std::vector<size_t>{1});
}

TEST(HostRounds, UnmovableVmsSpendTheirOwnHostsBudgetOnly) {
  std::vector<HostSpec> hosts = {{"a", "qemu:///system", 700ull << 20},
                                 {"b", "qemu:///session", std::nullopt}};
  std::vector<HostMember> m = {
      {"a", 512ull << 20, true, true},
      {"a", 300ull << 20, true, false},   // paused or starting on a: a's budget pays for it
      {"a", 900ull << 20, false, false},  // gone: holds nothing
      {"b", 256ull << 20, true, true},
      {"b", 256ull << 20, true, false},     // b has no budget: nothing to subtract from
      {"local", 64ull << 20, true, false},  // local has no movable VM: no round
  };
  auto rounds = host_rounds(hosts, 1ull << 30, m);
  ASSERT_EQ(rounds.size(), 2u);
  EXPECT_EQ(rounds[0].host, "a");
  EXPECT_EQ(rounds[0].budget, 400ull << 20);
  EXPECT_EQ(rounds[0].members, std::vector<size_t>{0});
  EXPECT_EQ(rounds[1].host, "b");
  EXPECT_EQ(rounds[1].budget, std::nullopt);
  // A host whose unmovable VMs hold more than its budget leaves the rest nothing, not a wrap.
  m = {{"a", 512ull << 20, true, true}, {"a", 800ull << 20, true, false}};
  EXPECT_EQ(host_rounds(hosts, std::nullopt, m)[0].budget, 0u);
}

TEST(LibvirtStats, KibToBytesAndLibvirtsNames) {
  const LibvirtStat raw[] = {
      {VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, 196608},
      {VIR_DOMAIN_MEMORY_STAT_RSS, 236392},
      {VIR_DOMAIN_MEMORY_STAT_UNUSED, 100},
      {VIR_DOMAIN_MEMORY_STAT_AVAILABLE, 190436},
      {VIR_DOMAIN_MEMORY_STAT_USABLE, 183868},
      {VIR_DOMAIN_MEMORY_STAT_DISK_CACHES, 183800},
      {VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT, 7},
      {VIR_DOMAIN_MEMORY_STAT_SWAP_IN, 2},
      {VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE, 1790000000},
  };
  DomainReading r = reading_from_libvirt_stats(raw, static_cast<int>(std::size(raw)));
  EXPECT_EQ(r.actual, 196608ull * 1024);
  EXPECT_EQ(r.rss, 236392ull * 1024);
  ASSERT_TRUE(r.stats);
  EXPECT_EQ(r.stats->free_memory, 100ull * 1024);          // "unused" is MEMFREE
  EXPECT_EQ(r.stats->total_memory, 190436ull * 1024);      // "available" is MEMTOT
  EXPECT_EQ(r.stats->available_memory, 183868ull * 1024);  // "usable" is AVAIL
  EXPECT_EQ(r.stats->disk_caches, 183800ull * 1024);
  EXPECT_EQ(r.stats->major_faults, 7u);  // a count, not KiB
  EXPECT_EQ(r.stats->swap_in, 2048u);
  EXPECT_EQ(r.stats->last_update, 1790000000u);
  EXPECT_FALSE(r.stats->alloc_stalls);  // libvirt does not pass tags 10-15 on
}

TEST(LibvirtStats, NoStatsBeforeTheGuestReports) {
  // A guest without a balloon driver (or not booted yet): libvirt has actual and rss only.
  const LibvirtStat raw[] = {{VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, 524288},
                             {VIR_DOMAIN_MEMORY_STAT_RSS, 9000}};
  DomainReading r = reading_from_libvirt_stats(raw, 2);
  EXPECT_EQ(r.actual, 512ull << 20);
  EXPECT_FALSE(r.stats);
}

TEST(HostPlots, OnePngPerHostBesideTheFleetOne) {
  EXPECT_EQ(host_plot_path("/tmp/out.png", "a"), "/tmp/out.a.png");
  EXPECT_EQ(host_plot_path("out", "b"), "out.b");
  EXPECT_EQ(host_plot_path("/tmp/x.d/out", "b"), "/tmp/x.d/out.b");
}
