// KSM control against a fake sysfs directory.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ksm_control.h"

using namespace hangar;
namespace fs = std::filesystem;

class FakeSysfs : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("hangar-ksm-" + std::to_string(getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_ / "ksm");
        fs::create_directories(dir_ / "proc" / "37");
        put("run", "0");
        put("pages_to_scan", "100");
        put("sleep_millisecs", "20");
        put("merge_across_nodes", "1");
        put("use_zero_pages", "0");
        put("advisor_mode", "[none] scan-time");
        put("pages_shared", "7");
        put("pages_sharing", "70");
        put("general_profit", "-4096");
        std::ofstream(dir_ / "proc" / "37" / "comm") << "ksmd\n";
        std::ofstream(dir_ / "proc" / "37" / "stat")
            << "37 (ksmd) S 2 0 0 0 -1 2097216 0 0 0 0 150 50 0 0 25 5 1 0 3 0 0 18446744073709551615\n";
    }
    void TearDown() override { fs::remove_all(dir_); }
    void put(const std::string& name, const std::string& v) { std::ofstream(dir_ / "ksm" / name) << v << "\n"; }
    std::string get(const std::string& name) {
        std::ifstream in(dir_ / "ksm" / name);
        std::string s;
        std::getline(in, s);
        return s;
    }
    std::string ksm() const { return (dir_ / "ksm").string(); }
    fs::path dir_;
};

TEST_F(FakeSysfs, ApplyThenRestore) {
    {
        KsmControl k(ksm());
        KsmConfig c;
        c.mode = KsmMode::Blind;
        c.pages_to_scan = 5000;
        c.sleep_millisecs = 10;
        std::string err;
        ASSERT_TRUE(k.apply(c, err)) << err;
        EXPECT_EQ(get("run"), "1");
        EXPECT_EQ(get("pages_to_scan"), "5000");
        EXPECT_EQ(get("sleep_millisecs"), "10");
        EXPECT_EQ(k.saved().size(), 3u);
        EXPECT_TRUE(k.restore().empty());
        EXPECT_EQ(get("run"), "0");
        EXPECT_EQ(get("pages_to_scan"), "100");
        EXPECT_EQ(get("sleep_millisecs"), "20");
    }
}

TEST_F(FakeSysfs, DestructorRestores) {
    {
        KsmControl k(ksm());
        std::string err;
        ASSERT_TRUE(k.set("pages_to_scan", "1", err));
        ASSERT_TRUE(k.set("pages_to_scan", "2", err));  // the first value is the one kept
    }
    EXPECT_EQ(get("pages_to_scan"), "100");
}

TEST_F(FakeSysfs, SelectionFilesAndUnknownKnobs) {
    KsmControl k(ksm());
    EXPECT_EQ(*k.read("advisor_mode"), "none");
    std::string err;
    ASSERT_TRUE(k.set("advisor_mode", "scan-time", err));
    EXPECT_TRUE(k.restore().empty());
    EXPECT_EQ(get("advisor_mode"), "none");
    EXPECT_FALSE(k.set("pages_shared", "0", err));
    EXPECT_NE(err.find("not one hangar manages"), std::string::npos);
}

TEST_F(FakeSysfs, OffModeStopsKsmd) {
    put("run", "1");
    KsmControl k(ksm());
    KsmConfig c;
    c.mode = KsmMode::Off;
    std::string err;
    ASSERT_TRUE(k.apply(c, err));
    EXPECT_EQ(get("run"), "0");
    k.restore();
    EXPECT_EQ(get("run"), "1");
}

TEST_F(FakeSysfs, UnchangedTouchesNothing) {
    KsmControl k(ksm());
    std::string err;
    ASSERT_TRUE(k.apply(KsmConfig{}, err));
    EXPECT_TRUE(k.saved().empty());
}

TEST_F(FakeSysfs, MissingKsmIsAClearError) {
    KsmControl k((dir_ / "nope").string());
    KsmConfig c;
    c.mode = KsmMode::Blind;
    std::string err;
    EXPECT_FALSE(k.apply(c, err));
    EXPECT_NE(err.find("KSM is not available"), std::string::npos);
}

TEST_F(FakeSysfs, SaveFileLetsAnotherProcessRestore) {
    const std::string save = (dir_ / "ksm-saved.json").string();
    const std::string orphan = (dir_ / "orphan.json").string();
    {
        KsmControl k(ksm());
        k.set_save_file(save);
        KsmConfig c;
        c.mode = KsmMode::Blind;
        c.pages_to_scan = 999;
        std::string err;
        ASSERT_TRUE(k.apply(c, err));
        ASSERT_TRUE(fs::exists(save));
        // What a SIGKILLed hangar leaves behind: the file, and KSM still changed.
        fs::copy_file(save, orphan);
    }
    EXPECT_FALSE(fs::exists(save));  // a clean restore removes its file
    put("run", "1");
    put("pages_to_scan", "999");
    auto failures = KsmControl::restore_from_file(orphan, "");
    EXPECT_TRUE(failures.empty());
    EXPECT_EQ(get("pages_to_scan"), "100");
    EXPECT_EQ(get("run"), "0");
    EXPECT_FALSE(fs::exists(orphan));
}

TEST_F(FakeSysfs, RestoreFileRejectsForeignSettings) {
    const std::string save = (dir_ / "evil.json").string();
    std::ofstream(save) << R"({"sysfs": ")" << ksm() << R"(", "saved": [{"name": "../../etc/passwd", "value": "x"}]})";
    auto failures = KsmControl::restore_from_file(save, "");
    ASSERT_EQ(failures.size(), 1u);
    EXPECT_NE(failures[0].find("refusing"), std::string::npos);
}

TEST_F(FakeSysfs, CountersAndKsmdCpu) {
    KsmControl k(ksm(), (dir_ / "proc").string());
    auto c = k.counters();
    EXPECT_EQ(c.get("pages_shared"), 7u);
    EXPECT_EQ(c.get("pages_sharing"), 70u);
    EXPECT_EQ(c.get("general_profit"), 0u);  // negative profit clamps to 0
    ASSERT_TRUE(c.ksmd_cpu_seconds);
    EXPECT_NEAR(*c.ksmd_cpu_seconds, 200.0 / static_cast<double>(sysconf(_SC_CLK_TCK)), 1e-9);
}
