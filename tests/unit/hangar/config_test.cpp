#include <gtest/gtest.h>

#include "config.h"

using namespace hangar;

namespace {
std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST(ConfigSizes, ParsesUnits) {
    EXPECT_EQ(parse_size("4096"), 4096u);
    EXPECT_EQ(parse_size("512M"), 512ull << 20);
    EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
    EXPECT_EQ(parse_size("1G"), 1ull << 30);
    EXPECT_EQ(parse_size(" 1.5g "), 3ull << 29);
    EXPECT_EQ(parse_size("2T"), 2ull << 40);
}

TEST(ConfigSizes, RejectsGarbage) {
    for (const char* bad : {"", "M", "-1G", "1e9", "1X", "0x10", "1.5", "99999999999999999999T", ".", "1..2G"})
        EXPECT_THROW(parse_size(bad), ConfigError) << bad;
}

TEST(ConfigDurations, ParsesUnits) {
    EXPECT_EQ(parse_duration("60s").count(), 60000);
    EXPECT_EQ(parse_duration("60").count(), 60000);
    EXPECT_EQ(parse_duration("250ms").count(), 250);
    EXPECT_EQ(parse_duration("2m").count(), 120000);
    EXPECT_EQ(parse_duration("1h").count(), 3600000);
    EXPECT_THROW(parse_duration("soon"), ConfigError);
    EXPECT_THROW(parse_duration("5d"), ConfigError);
}

TEST(ConfigVmFlag, KeysAndQuotedArgs) {
    VmSpec vm = parse_vm_flag("name=a,app=idle,memory=512M,machine=q35,args=\"x=1 y=2,z\",shares=500,balloon=off");
    EXPECT_EQ(vm.name, "a");
    EXPECT_EQ(vm.app, "idle");
    EXPECT_EQ(vm.memory, 512ull << 20);
    EXPECT_EQ(vm.machine, Machine::Q35);
    EXPECT_EQ(vm.args, (std::vector<std::string>{"x=1", "y=2,z"}));
    EXPECT_EQ(vm.shares, 500u);
    EXPECT_FALSE(vm.balloon);
}

TEST(ConfigVmFlag, ClearErrors) {
    EXPECT_NE(error_of([] { parse_vm_flag("name=a,memroy=1G"); }).find("did you mean \"memory\""), std::string::npos);
    EXPECT_NE(error_of([] { parse_vm_flag("name=a,machine=virt"); }).find("unknown machine"), std::string::npos);
    EXPECT_NE(error_of([] { parse_vm_flag("name=a,args=\"x"); }).find("unterminated"), std::string::npos);
    EXPECT_NE(error_of([] { parse_vm_flag("justaname"); }).find("key=value"), std::string::npos);
    EXPECT_NE(error_of([] { parse_vm_flag("memory=lots"); }).find("invalid size"), std::string::npos);
    EXPECT_THROW(parse_vm_flag(""), ConfigError);
}

TEST(ConfigJson, FullFile) {
    Config c = parse_config_json(R"({
        // comments are allowed
        "budget": "1G", "qemu": "stock", "duration": "30s", "interval": "500ms",
        "csv": "out.csv", "plot": "out.png",
        "ksm": {"mode": "blind", "pages_to_scan": 1000},
        "policy": {"tax_rate": 0.5, "floor": "48M", "sweep": "5s"},
        "defaults": {"memory": "384M", "machine": "microvm"},
        "vms": [
            {"name": "web", "count": 3, "app": "kvcache", "args": ["size=64M"]},
            {"name": "db", "memory": "512M", "balloon_props": {"coalesce-discard": true}}
        ]})",
                                 "fleet.json");
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
    EXPECT_EQ(c.interval.count(), 500);
    EXPECT_NO_THROW(validate(c));
}

TEST(ConfigJson, ErrorsNameThePlace) {
    auto err = [](const char* text) { return error_of([&] { parse_config_json(text, "f.json"); }); };
    EXPECT_NE(err("{").find("f.json: not valid JSON"), std::string::npos);
    EXPECT_NE(err("[]").find("expected an object"), std::string::npos);
    EXPECT_NE(err(R"({"vms": [{"name": "a", "memroy": "1G"}]})").find("vms[0]: unknown key \"memroy\" (did you mean \"memory\"?)"),
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
    EXPECT_NE(error_of([&] { validate(c); }).find("no VMs"), std::string::npos);
    c.vms.push_back(parse_vm_flag("name=a"));
    c.vms.push_back(parse_vm_flag("name=a"));
    EXPECT_NE(error_of([&] { validate(c); }).find("duplicate"), std::string::npos);
    c.vms[1].name = "bad name";
    EXPECT_NE(error_of([&] { validate(c); }).find("a name is"), std::string::npos);
    c.vms[1].name = "b";
    c.vms[1].min_memory = 1ull << 30;
    EXPECT_NE(error_of([&] { validate(c); }).find("min_memory"), std::string::npos);
    c.vms[1].min_memory = 0;
    c.vms[1].memory = 8ull << 20;
    EXPECT_NE(error_of([&] { validate(c); }).find("below 16 MiB"), std::string::npos);
    c.vms[1].memory = 256ull << 20;
    c.budget = 1ull << 20;
    EXPECT_NE(error_of([&] { validate(c); }).find("below the VMs' floors"), std::string::npos);
    c.budget.reset();
    c.vms[1].app = "two words";
    EXPECT_NE(error_of([&] { validate(c); }).find("invalid app"), std::string::npos);
    c.vms[1].app = "hello";
    c.ksm.mode = KsmMode::Targeted;
    c.qemu = "stock";
    EXPECT_NE(error_of([&] { validate(c); }).find("patched QEMU"), std::string::npos);
    c.ksm.mode = KsmMode::Blind;
    EXPECT_NO_THROW(validate(c));
}

TEST(ConfigJson, KsmLock) {
    Config c = parse_config_json(R"({"ksm": {"mode": "targeted", "lock": "/tmp/x.lock", "lock_wait": "2m"},
                                     "vms": [{"name": "a"}]})",
                                 "f.json");
    EXPECT_EQ(c.ksm.lock, "/tmp/x.lock");
    EXPECT_EQ(c.ksm.lock_wait.count(), 120000);
    EXPECT_EQ(Config{}.ksm.lock, "auto");
    EXPECT_EQ(Config{}.ksm.lock_wait.count(), 30000);
    EXPECT_NE(error_of([] { parse_config_json(R"({"ksm": {"lock_wait": "soon"}})", "f.json"); }).find("ksm.lock_wait"),
              std::string::npos);
    c.ksm.lock = "";
    EXPECT_NE(error_of([&] { validate(c); }).find("ksm lock"), std::string::npos);
}
