#include <gtest/gtest.h>

#include "config.h"
#include "error_text.h"

using namespace hangar;

TEST(ConfigSizes, ParsesUnits) {
  EXPECT_EQ(parse_size("4096").value(), 4096u);
  EXPECT_EQ(parse_size("512M").value(), 512ull << 20);
  EXPECT_EQ(parse_size("512MiB").value(), 512ull << 20);
  EXPECT_EQ(parse_size("1G").value(), 1ull << 30);
  EXPECT_EQ(parse_size(" 1.5g ").value(), 3ull << 29);
  EXPECT_EQ(parse_size("2T").value(), 2ull << 40);
}

TEST(ConfigSizes, RejectsGarbage) {
  for (const char* bad :
       {"", "M", "-1G", "1e9", "1X", "0x10", "1.5", "99999999999999999999T", ".", "1..2G"})
    EXPECT_TRUE(parse_size(bad).is_error()) << bad;
}

TEST(ConfigDurations, ParsesUnits) {
  EXPECT_EQ(parse_duration("60s").value().count(), 60000);
  EXPECT_EQ(parse_duration("60").value().count(), 60000);
  EXPECT_EQ(parse_duration("250ms").value().count(), 250);
  EXPECT_EQ(parse_duration("2m").value().count(), 120000);
  EXPECT_EQ(parse_duration("1h").value().count(), 3600000);
  EXPECT_TRUE(parse_duration("soon").is_error());
  EXPECT_TRUE(parse_duration("5d").is_error());
}

TEST(ConfigVmFlag, KeysAndQuotedArgs) {
  VmSpec vm =
      parse_vm_flag(
          "name=a,app=idle,memory=512M,machine=q35,args=\"x=1 y=2,z\",shares=500,balloon=off")
          .value();
  EXPECT_EQ(vm.name, "a");
  EXPECT_EQ(vm.app, "idle");
  EXPECT_EQ(vm.memory, 512ull << 20);
  EXPECT_EQ(vm.machine, Machine::Q35);
  EXPECT_EQ(vm.args, (std::vector<std::string>{"x=1", "y=2,z"}));
  EXPECT_EQ(vm.shares, 500u);
  EXPECT_FALSE(vm.balloon);
}

TEST(ConfigVmFlag, ClearErrors) {
  EXPECT_NE(error_text(parse_vm_flag("name=a,memroy=1G")).find("did you mean \"memory\""),
            std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("name=a,machine=virt")).find("unknown machine"),
            std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("name=a,args=\"x")).find("unterminated"), std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("justaname")).find("key=value"), std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("memory=lots")).find("invalid size"), std::string::npos);
  EXPECT_TRUE(parse_vm_flag("").is_error());
}

TEST(ConfigVmFlag, Vcpus) {
  EXPECT_EQ(parse_vm_flag("name=a").value().vcpus, 1u);
  EXPECT_EQ(parse_vm_flag("name=a,vcpus=4").value().vcpus, 4u);
  EXPECT_NE(error_text(parse_vm_flag("name=a,vcpus=0")).find("out of range (allowed: 1 to 64)"),
            std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("name=a,vcpus=65")).find("out of range"), std::string::npos);
  EXPECT_NE(error_text(parse_vm_flag("name=a,vcpus=two")).find("positive integer"),
            std::string::npos);
  EXPECT_NE(error_text(parse_config_json(R"({"vms": [{"name": "a", "vcpus": "2"}]})", "f.json"))
                .find("expected an integer from 1 to 64"),
            std::string::npos);
  EXPECT_EQ(
      parse_config_json(R"({"vms": [{"name": "a", "vcpus": 2}]})", "f.json").value().vms[0].vcpus,
      2u);
}

TEST(ConfigJson, FullFile) {
  Config c = parse_config_json(R"({
        // comments are allowed
        "budget": "1G", "qemu": "stock", "duration": "30s", "interval": "500ms",
        "csv": "out.csv", "plot": "out.png",
        "ksm": {"mode": "blind", "pages_to_scan": 1000},
        "policy": {"tax_rate": 0.5, "floor": "48M", "sweep": "5s", "idle_after": "16s"},
        "defaults": {"memory": "384M", "machine": "microvm"},
        "vms": [
            {"name": "web", "count": 3, "app": "kvcache", "args": ["size=64M"]},
            {"name": "db", "memory": "512M", "balloon_props": {"coalesce-discard": true}}
        ]})",
                               "fleet.json")
                 .value();
  ASSERT_EQ(c.vms.size(), 4u);
  EXPECT_EQ(c.vms[0].name, "web1");
  EXPECT_EQ(c.vms[2].name, "web3");
  EXPECT_EQ(c.vms[1].memory, 384ull << 20);
  EXPECT_EQ(c.vms[3].memory, 512ull << 20);
  EXPECT_EQ(c.vms[3].balloon_props.at("coalesce-discard"), "on");
  EXPECT_EQ(*c.budget, 1ull << 30);
  EXPECT_EQ(c.ksm.mode, KsmMode::Blind);
  EXPECT_EQ(*c.ksm.pages_to_scan, 1000u);
  EXPECT_DOUBLE_EQ(c.policy.tax_rate, 0.5);
  EXPECT_EQ(c.policy.floor, 48ull << 20);
  EXPECT_EQ(c.policy.sweep.count(), 5000);
  EXPECT_EQ(c.policy.idle_after.count(), 16000);
  EXPECT_EQ(c.interval.count(), 500);
  EXPECT_EQ(error_text(validate(c)), "");
}

TEST(ConfigJson, ErrorsNameThePlace) {
  auto err = [](const char* text) { return error_text(parse_config_json(text, "f.json")); };
  EXPECT_NE(err("{").find("f.json: not valid JSON"), std::string::npos);
  EXPECT_NE(err("[]").find("expected an object"), std::string::npos);
  EXPECT_NE(err(R"({"vms": [{"name": "a", "memroy": "1G"}]})")
                .find("vms[0]: unknown key \"memroy\" (did you mean \"memory\"?)"),
            std::string::npos);
  EXPECT_NE(err(R"({"bugdet": "1G"})").find("did you mean \"budget\""), std::string::npos);
  EXPECT_NE(err(R"({"vms": [{"memory": -5}]})").find("vms[0].memory"), std::string::npos);
  EXPECT_NE(err(R"({"vms": [{"count": 0}]})").find("count"), std::string::npos);
  EXPECT_NE(err(R"({"vms": {}})").find("expected a list"), std::string::npos);
  EXPECT_NE(err(R"({"ksm": "sometimes"})").find("unknown KSM mode"), std::string::npos);
  EXPECT_NE(err(R"({"defaults": {"name": "x"}})").find("cannot be a default"), std::string::npos);
}

TEST(ConfigValidate, CrossFieldChecks) {
  Config c;
  EXPECT_NE(error_text(validate(c)).find("no VMs"), std::string::npos);
  c.vms.push_back(parse_vm_flag("name=a").value());
  c.vms.push_back(parse_vm_flag("name=a").value());
  EXPECT_NE(error_text(validate(c)).find("duplicate"), std::string::npos);
  c.vms[1].name = "bad name";
  EXPECT_NE(error_text(validate(c)).find("a name is"), std::string::npos);
  c.vms[1].name = "b";
  c.vms[1].min_memory = 1ull << 30;
  EXPECT_NE(error_text(validate(c)).find("min_memory"), std::string::npos);
  c.vms[1].min_memory = 0;
  c.vms[1].memory = 8ull << 20;
  EXPECT_NE(error_text(validate(c)).find("below 16 MiB"), std::string::npos);
  c.vms[1].memory = 256ull << 20;
  c.budget = 1ull << 20;
  EXPECT_NE(error_text(validate(c)).find("below the VMs' floors"), std::string::npos);
  c.budget.reset();
  c.vms[1].app = "two words";
  EXPECT_NE(error_text(validate(c)).find("invalid app"), std::string::npos);
  c.vms[1].app = "hello";
  c.ksm.mode = KsmMode::Targeted;
  c.qemu = "stock";
  EXPECT_NE(error_text(validate(c)).find("patched QEMU"), std::string::npos);
  c.ksm.mode = KsmMode::Blind;
  EXPECT_EQ(error_text(validate(c)), "");
}

TEST(ConfigJson, KsmLock) {
  Config c =
      parse_config_json(R"({"ksm": {"mode": "targeted", "lock": "/tmp/x.lock", "lock_wait": "2m"},
                                     "vms": [{"name": "a"}]})",
                        "f.json")
          .value();
  EXPECT_EQ(c.ksm.lock, "/tmp/x.lock");
  EXPECT_FALSE(c.ksm.smart_scan.has_value());  // targeted mode decides (KsmConfig)
  EXPECT_EQ(c.ksm.lock_wait.count(), 120000);
  EXPECT_EQ(Config{}.ksm.lock, "auto");
  EXPECT_EQ(Config{}.ksm.lock_wait.count(), 30000);
  EXPECT_NE(error_text(parse_config_json(R"({"ksm": {"lock_wait": "soon"}})", "f.json"))
                .find("ksm.lock_wait"),
            std::string::npos);
  c.ksm.lock = "";
  EXPECT_NE(error_text(validate(c)).find("ksm lock"), std::string::npos);
}

// Every numeric key has a range, and a value outside it is an error that names the key and the
// range (issue 15). Durations given as integers no longer wrap.
TEST(ConfigRanges, EveryNumericKeyIsRangeChecked) {
  auto json_err = [](const std::string& body) {
    auto c = parse_config_json("{\"vms\": [{\"name\": \"a\"}], " + body + "}", "f.json");
    return c.is_error() ? c.error().message : error_text(validate(c.value()));
  };
  const std::string huge = "18446744073709551615";
  const std::string wraps = "18446744073709552";  // * 1000 wraps to a small number
  struct Case {
    std::string body, key;
  };
  const std::vector<Case> cases = {
      {"\"duration\": " + wraps, "duration"},
      {"\"duration\": " + huge, "duration"},
      {"\"duration\": \"400d\"", "duration"},  // unit error, still names the key
      {"\"duration\": \"9000h\"", "duration"},
      {"\"interval\": " + wraps, "interval"},
      {"\"interval\": \"50ms\"", "interval"},
      {"\"interval\": \"2h\"", "interval"},
      {"\"grace\": " + wraps, "grace"},
      {"\"grace\": \"2h\"", "grace"},
      {"\"qmp_timeout\": " + wraps, "qmp_timeout"},
      {"\"qmp_timeout\": \"1h\"", "qmp_timeout"},
      {"\"qmp_timeout\": \"10ms\"", "qmp_timeout"},
      {"\"stats_interval\": 3601", "stats_interval"},
      {"\"stats_interval\": " + huge, "stats_interval"},
      {"\"budget\": " + huge, "budget"},
      {"\"budget\": 0", "budget"},
      {"\"budget\": \"2048T\"", "budget"},
      {"\"policy\": {\"tax_rate\": 1.5}", "tax_rate"},
      {"\"policy\": {\"tax_rate\": -0.1}", "tax_rate"},
      {"\"policy\": {\"pressure_grow\": 0}", "pressure_grow"},
      {"\"policy\": {\"floor\": \"2T\"}", "floor"},
      {"\"policy\": {\"hysteresis\": \"2T\"}", "hysteresis"},
      {"\"policy\": {\"max_step\": 0}", "max_step"},
      {"\"policy\": {\"max_step\": \"2T\"}", "max_step"},
      {"\"policy\": {\"reclaim_hold\": 100001}", "reclaim_hold"},
      {"\"policy\": {\"idle_after\": \"500ms\"}", "idle_after"},
      {"\"policy\": {\"idle_after\": \"2d\"}", "idle_after"},
      {"\"policy\": {\"idle_after\": " + wraps + "}", "idle_after"},
      {"\"policy\": {\"sweep\": " + wraps + "}", "sweep"},
      {"\"policy\": {\"sweep\": \"50ms\"}", "sweep"},
      {"\"policy\": {\"sweep\": \"2d\"}", "sweep"},
      {"\"ksm\": {\"pages_to_scan\": 0}", "pages_to_scan"},
      {"\"ksm\": {\"pages_to_scan\": " + huge + "}", "pages_to_scan"},
      {"\"ksm\": {\"sleep_millisecs\": 4294967296}", "sleep_millisecs"},
      {"\"ksm\": {\"merge_across_nodes\": 2}", "merge_across_nodes"},
      {"\"ksm\": {\"use_zero_pages\": 2}", "use_zero_pages"},
      {"\"ksm\": {\"smart_scan\": 2}", "smart_scan"},
      {"\"ksm\": {\"hint_refresh\": " + wraps + "}", "hint_refresh"},
      {"\"ksm\": {\"hint_refresh\": \"10ms\"}", "hint_refresh"},
      {"\"ksm\": {\"lock_wait\": " + wraps + "}", "lock_wait"},
      {"\"ksm\": {\"lock_wait\": \"2d\"}", "lock_wait"},
      {"\"defaults\": {\"memory\": " + huge + "}", "memory"},
      {"\"defaults\": {\"memory\": \"8M\"}", "memory"},
      {"\"defaults\": {\"shares\": 0}", "shares"},
      {"\"defaults\": {\"shares\": 1000001}", "shares"},
      {"\"defaults\": {\"min_memory\": \"2T\"}", "min_memory"},
  };
  for (const auto& c : cases) {
    std::string e = json_err(c.body);
    EXPECT_NE(e.find(c.key), std::string::npos) << c.body << " -> " << e;
    EXPECT_FALSE(e.empty()) << c.body;
  }
  // Range errors say what is allowed.
  EXPECT_NE(json_err("\"interval\": \"50ms\"").find("allowed: 100 ms to 1 h"), std::string::npos);
  EXPECT_NE(json_err("\"duration\": " + wraps).find("out of range"), std::string::npos);
  EXPECT_NE(json_err("\"ksm\": {\"pages_to_scan\": 0}").find("allowed: 1 to 1073741824"),
            std::string::npos);
  EXPECT_NE(error_text(parse_config_json("{\"vms\": [{\"count\": 257}]}", "f.json"))
                .find("allowed: 1 to 256"),
            std::string::npos);
  // The edges of each range are accepted.
  EXPECT_EQ(
      json_err(
          "\"interval\": \"100ms\", \"grace\": 0, \"duration\": 31536000, \"qmp_timeout\": "
          "\"10m\", "
          "\"stats_interval\": 3600, \"policy\": {\"sweep\": 0, \"max_step\": 1}, "
          "\"ksm\": {\"pages_to_scan\": 1073741824, \"sleep_millisecs\": 0, \"lock_wait\": 0}"),
      "");
}

TEST(ConfigRanges, FlagValuesAreCheckedToo) {
  // Flags fill Config directly; validate() is what stands between them and KSM/QEMU.
  Config c;
  c.vms.push_back(parse_vm_flag("name=a").value());
  c.ksm.pages_to_scan = 1ull << 40;
  EXPECT_NE(error_text(validate(c)).find("--ksm-pages-to-scan"), std::string::npos);
  c.ksm.pages_to_scan.reset();
  c.ksm.sleep_millisecs = ~0ull;
  EXPECT_NE(error_text(validate(c)).find("--ksm-sleep-ms"), std::string::npos);
  c.ksm.sleep_millisecs.reset();
  c.policy.tax_rate = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(error_text(validate(c)).find("--tax-rate"), std::string::npos);
  c.policy.tax_rate = 0.5;
  EXPECT_TRUE(parse_duration("18446744073709552").is_error());
  EXPECT_TRUE(parse_duration("1e3").is_error());
  EXPECT_EQ(error_text(validate(c)), "");
}

TEST(ConfigJson, DeepNestingIsAnErrorNotACrash) {
  // Under the 1 MiB file limit, yet deep enough to overflow the stack when a message dumps it.
  std::string text = "{\"budget\": " + std::string(500000, '[') + std::string(500000, ']') + "}";
  EXPECT_NE(error_text(parse_config_json(text, "f.json")).find("nested deeper"), std::string::npos);
}
