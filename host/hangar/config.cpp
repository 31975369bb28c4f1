#include "config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "qmp.h"  // json_nesting_depth

namespace hangar {

using json = nlohmann::json;

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

// Splits "1.5GiB" into the number and the unit, accepting only a plain decimal number: no sign,
// no exponent, no hex, so that "-1G" or "1e9" are errors rather than surprises.
bool split_number(std::string_view s, double& value, std::string& unit) {
    size_t i = 0;
    bool digits = false, dot = false;
    while (i < s.size()) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            digits = true;
        } else if (c == '.' && !dot) {
            dot = true;
        } else {
            break;
        }
        ++i;
    }
    if (!digits || i > 24) return false;
    value = std::stod(std::string(s.substr(0, i)));
    unit = lower(trim(s.substr(i)));
    return true;
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cur = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
            prev = cur;
        }
    }
    return row[b.size()];
}

std::string unknown_key_message(std::string_view where, const std::string& key,
                                const std::vector<std::string_view>& known) {
    std::string best;
    size_t best_d = 3;  // only suggest close matches: a typo, not a different word
    for (auto k : known) {
        size_t d = edit_distance(lower(key), k);
        if (d < best_d) {
            best_d = d;
            best = k;
        }
    }
    std::string msg = std::string(where) + ": unknown key \"" + key + "\"";
    if (!best.empty()) msg += " (did you mean \"" + best + "\"?)";
    return msg;
}

// Each enum's words, as the config and the flags spell them: parse_*() and to_string() read
// these tables, so a word is written once.
template <typename E>
using Name = std::pair<std::string_view, E>;
constexpr Name<Machine> kMachines[] = {{"microvm", Machine::Microvm}, {"q35", Machine::Q35}, {"pc", Machine::Pc}};
constexpr Name<KsmMode> kKsmModes[] = {{"unchanged", KsmMode::Unchanged},
                                       {"off", KsmMode::Off},
                                       {"blind", KsmMode::Blind},
                                       {"targeted", KsmMode::Targeted}};
constexpr Name<PolicyKind> kPolicyKinds[] = {{"idle-tax", PolicyKind::IdleTax}, {"none", PolicyKind::None}};
constexpr Name<SweepWhen> kSweepWhens[] = {{"pressure", SweepWhen::Pressure}, {"always", SweepWhen::Always}};
constexpr Name<ShareScope> kShareScopes[] = {{"across", ShareScope::AcrossVms}, {"within", ShareScope::WithinVm}};
constexpr Name<StatusDisplay> kStatusDisplays[] = {{"auto", StatusDisplay::Auto},
                                                   {"tty", StatusDisplay::Tty},
                                                   {"plain", StatusDisplay::Plain},
                                                   {"off", StatusDisplay::Off}};

template <typename E, size_t N>
std::optional<E> value_of(const Name<E> (&names)[N], std::string_view word) {
    for (const auto& [w, v] : names)
        if (w == word) return v;
    return std::nullopt;
}

template <typename E, size_t N>
std::string_view name_of(const Name<E> (&names)[N], E value) {
    for (const auto& [w, v] : names)
        if (v == value) return w;
    return "?";
}

// The longest duration any key accepts before its own range check (parse_duration's limit too).
constexpr uint64_t kMaxDurationSeconds = 1'000'000'000;

// Reads JSON values with messages that say where in the file the problem is.
class Reader {
public:
    Reader(std::string where) : where_(std::move(where)) {}

    // The error for `key` (a JSON path below where(); "" for where() itself).
    Error fail(const std::string& key, const std::string& what) const {
        return Error{where_ + (key.empty() ? "" : "." + key) + ": " + what};
    }
    // A parse error (parse_size's, parse_machine's, ...) said of `key`.
    template <typename T>
    ErrorOr<T> at(const std::string& key, ErrorOr<T> parsed) const {
        if (parsed.is_error()) return fail(key, parsed.error().message);
        return parsed;
    }

    ErrorOr<void> check_keys(const json& obj, const std::vector<std::string_view>& known) const {
        if (!obj.is_object()) return Error{where_ + ": expected an object"};
        for (auto it = obj.begin(); it != obj.end(); ++it) {
            if (std::find(known.begin(), known.end(), it.key()) == known.end())
                return Error{unknown_key_message(where_, it.key(), known)};
        }
        return {};
    }

    ErrorOr<std::string> str(const json& v, const std::string& key) const {
        if (!v.is_string()) return fail(key, "expected a string, got " + v.dump());
        return v.get<std::string>();
    }
    ErrorOr<bool> boolean(const json& v, const std::string& key) const {
        if (!v.is_boolean()) return fail(key, "expected true or false, got " + v.dump());
        return v.get<bool>();
    }
    ErrorOr<uint64_t> uint(const json& v, const std::string& key, uint64_t max, uint64_t min = 0) const {
        if (!v.is_number_unsigned())
            return fail(key, "expected an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                                 ", got " + v.dump());
        uint64_t n = v.get<uint64_t>();
        if (n < min || n > max)
            return fail(key, std::to_string(n) + " is out of range (allowed: " + std::to_string(min) + " to " +
                                 std::to_string(max) + ")");
        return n;
    }
    ErrorOr<double> number(const json& v, const std::string& key) const {
        if (!v.is_number()) return fail(key, "expected a number, got " + v.dump());
        return v.get<double>();
    }
    // Sizes may be JSON integers (bytes) or strings with units.
    ErrorOr<uint64_t> size(const json& v, const std::string& key) const {
        if (v.is_number_unsigned()) return v.get<uint64_t>();
        if (!v.is_string()) return fail(key, "expected a size such as \"512M\", got " + v.dump());
        return at(key, parse_size(v.get<std::string>()));
    }
    ErrorOr<Millis> duration(const json& v, const std::string& key) const {
        if (v.is_number_unsigned()) {
            // A bare integer is seconds; checked before multiplying, which would wrap.
            const uint64_t n = v.get<uint64_t>();
            if (n > kMaxDurationSeconds)
                return fail(key, std::to_string(n) + " s is out of range (allowed: at most " +
                                     std::to_string(kMaxDurationSeconds) + " s)");
            return Millis(static_cast<int64_t>(n) * 1000);
        }
        if (!v.is_string()) return fail(key, "expected a duration such as \"60s\", got " + v.dump());
        return at(key, parse_duration(v.get<std::string>()));
    }
    ErrorOr<std::vector<std::string>> strings(const json& v, const std::string& key) const {
        // A single string is split on whitespace, as a shell user would expect of "args".
        if (v.is_string()) {
            std::vector<std::string> out;
            std::istringstream in(v.get<std::string>());
            for (std::string w; in >> w;) out.push_back(w);
            return out;
        }
        if (!v.is_array()) return fail(key, "expected a list of strings, got " + v.dump());
        std::vector<std::string> out;
        for (const auto& e : v) out.push_back(TRY(str(e, key + "[]")));
        return out;
    }
    const std::string& where() const { return where_; }

private:
    std::string where_;
};

const std::vector<std::string_view> kVmKeys = {"name",          "app",     "args",  "memory", "min_memory", "machine",
                                               "vcpus",         "balloon", "start", "shares", "kernel",     "qemu_args",
                                               "balloon_props", "count",   "host",  "domain"};

// Blimp's limit (kernel/percpu.h kMaxCpus): a guest given more reports and leaves out the rest.
constexpr uint64_t kMaxVcpus = 64;

ErrorOr<void> apply_vm_key(VmSpec& vm, const Reader& r, const std::string& key, const json& v) {
    if (key == "name")
        vm.name = TRY(r.str(v, key));
    else if (key == "app")
        vm.app = TRY(r.str(v, key));
    else if (key == "args")
        vm.args = TRY(r.strings(v, key));
    else if (key == "memory")
        vm.memory = TRY(r.size(v, key));
    else if (key == "min_memory")
        vm.min_memory = TRY(r.size(v, key));
    else if (key == "machine") {
        // r.at() around r.str() too: a non-string's message names the key twice, as it always has
        // (left for a fix of its own; this change keeps every message).
        const std::string s = TRY(r.at(key, r.str(v, key)));
        vm.machine = TRY(r.at(key, parse_machine(s)));
    } else if (key == "vcpus")
        vm.vcpus = static_cast<unsigned>(TRY(r.uint(v, key, kMaxVcpus, 1)));
    else if (key == "balloon")
        vm.balloon = TRY(r.boolean(v, key));
    else if (key == "start") {
        std::string s = TRY(r.str(v, key));
        if (s == "running")
            vm.start = StartMode::Running;
        else if (s == "paused")
            vm.start = StartMode::Paused;
        else
            return r.fail(key, "expected \"running\" or \"paused\", got \"" + s + "\"");
    } else if (key == "shares")
        vm.shares = static_cast<unsigned>(TRY(r.uint(v, key, 1000000, 1)));
    else if (key == "kernel")
        vm.kernel = TRY(r.str(v, key));
    else if (key == "qemu_args")
        vm.qemu_args = TRY(r.strings(v, key));
    else if (key == "host")
        vm.host = TRY(r.str(v, key));
    else if (key == "domain")
        vm.domain = TRY(r.str(v, key));
    else if (key == "balloon_props") {
        if (!v.is_object()) return r.fail(key, "expected an object of device properties");
        vm.balloon_props.clear();
        for (auto it = v.begin(); it != v.end(); ++it) {
            const json& pv = it.value();
            if (pv.is_string())
                vm.balloon_props[it.key()] = pv.get<std::string>();
            else if (pv.is_boolean())
                vm.balloon_props[it.key()] = pv.get<bool>() ? "on" : "off";
            else if (pv.is_number_unsigned())
                vm.balloon_props[it.key()] = std::to_string(pv.get<uint64_t>());
            else
                return r.fail(key + "." + it.key(), "expected a string, boolean or integer");
        }
    }
    return {};
}

ErrorOr<std::vector<HostSpec>> parse_hosts(const json& v, const std::string& where) {
    if (!v.is_array()) return Error{where + ": expected a list of hosts"};
    std::vector<HostSpec> hosts;
    for (size_t i = 0; i < v.size(); ++i) {
        Reader r(where + "[" + std::to_string(i) + "]");
        TRY(r.check_keys(v[i], {"name", "uri", "budget"}));
        HostSpec h;
        for (auto it = v[i].begin(); it != v[i].end(); ++it) {
            if (it.key() == "name")
                h.name = TRY(r.str(*it, it.key()));
            else if (it.key() == "uri")
                h.uri = TRY(r.str(*it, it.key()));
            else if (it.key() == "budget")
                h.budget = TRY(r.size(*it, it.key()));
        }
        if (h.uri.empty()) return r.fail("uri", "missing: each host needs a libvirt URI (e.g. qemu:///system)");
        hosts.push_back(std::move(h));
    }
    return hosts;
}

ErrorOr<void> parse_policy(PolicyConfig& p, const json& v, const std::string& where) {
    Reader r(where);
    TRY(r.check_keys(v, {"name", "tax_rate", "floor", "hysteresis", "max_step", "pressure_grow", "reclaim_hold",
                         "idle_after", "sweep", "sweep_when", "host_reserve"}));
    for (auto it = v.begin(); it != v.end(); ++it) {
        const std::string& k = it.key();
        if (k == "name") {
            const std::string name = TRY(r.str(*it, k));
            p.kind = TRY(parse_policy_kind(name));
        } else if (k == "tax_rate")
            p.tax_rate = TRY(r.number(*it, k));
        else if (k == "floor")
            p.floor = TRY(r.size(*it, k));
        else if (k == "hysteresis")
            p.hysteresis = TRY(r.size(*it, k));
        else if (k == "max_step")
            p.max_step = TRY(r.size(*it, k));
        else if (k == "pressure_grow")
            p.pressure_grow = TRY(r.number(*it, k));
        else if (k == "reclaim_hold")
            p.reclaim_hold = static_cast<unsigned>(TRY(r.uint(*it, k, 100000)));
        else if (k == "idle_after")
            p.idle_after = TRY(r.duration(*it, k));
        else if (k == "sweep")
            p.sweep = TRY(r.duration(*it, k));
        else if (k == "sweep_when") {
            const std::string when = TRY(r.str(*it, k));
            p.sweep_when = TRY(r.at(k, parse_sweep_when(when)));
        } else if (k == "host_reserve")
            p.host_reserve = TRY(r.size(*it, k));
    }
    return {};
}

ErrorOr<void> parse_ksm(KsmConfig& k, const json& v, const std::string& where) {
    Reader r(where);
    if (v.is_string()) {
        k.mode = TRY(parse_ksm_mode(v.get<std::string>()));
        return {};
    }
    TRY(r.check_keys(v, {"mode", "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "use_zero_pages",
                         "smart_scan", "sysfs", "scope", "hint_refresh", "lock", "lock_wait"}));
    for (auto it = v.begin(); it != v.end(); ++it) {
        const std::string& key = it.key();
        if (key == "mode") {
            const std::string mode = TRY(r.at(key, r.str(*it, key)));  // key named twice, as for machine
            k.mode = TRY(r.at(key, parse_ksm_mode(mode)));
        } else if (key == "pages_to_scan")
            k.pages_to_scan = TRY(r.uint(*it, key, kMaxKsmKnob, 1));
        else if (key == "sleep_millisecs")
            k.sleep_millisecs = TRY(r.uint(*it, key, kMaxKsmKnob));
        else if (key == "merge_across_nodes")
            k.merge_across_nodes = TRY(r.uint(*it, key, 1));
        else if (key == "use_zero_pages")
            k.use_zero_pages = TRY(r.uint(*it, key, 1));
        else if (key == "smart_scan")
            k.smart_scan = TRY(r.uint(*it, key, 1));
        else if (key == "sysfs")
            k.sysfs = TRY(r.str(*it, key));
        else if (key == "scope") {
            const std::string scope = TRY(r.str(*it, key));
            k.scope = TRY(parse_share_scope(scope));
        } else if (key == "hint_refresh")
            k.hint_refresh = TRY(r.duration(*it, key));
        else if (key == "lock")
            k.lock = TRY(r.str(*it, key));
        else if (key == "lock_wait")
            k.lock_wait = TRY(r.duration(*it, key));
    }
    return {};
}

// Range checks for validate(): each names the key (and its flag) and the allowed range.
Error out_of_range(const std::string& key, const std::string& value, const std::string& range) {
    return Error{key + ": " + value + " is out of range (allowed: " + range + ")"};
}
ErrorOr<void> check_duration(const std::string& key, Millis v, Millis lo, Millis hi, bool zero_ok = false) {
    if (zero_ok && v.count() == 0) return {};
    if (v < lo || v > hi)
        return out_of_range(key, format_duration(v),
                            (zero_ok ? "0 (off) or " : "") + format_duration(lo) + " to " + format_duration(hi));
    return {};
}
ErrorOr<void> check_size(const std::string& key, uint64_t v, uint64_t lo, uint64_t hi) {
    if (v < lo || v > hi) return out_of_range(key, format_size(v), format_size(lo) + " to " + format_size(hi));
    return {};
}
ErrorOr<void> check_uint(const std::string& key, uint64_t v, uint64_t lo, uint64_t hi) {
    if (v < lo || v > hi) return out_of_range(key, std::to_string(v), std::to_string(lo) + " to " + std::to_string(hi));
    return {};
}

}  // namespace

std::string format_duration(Millis d) {
    const int64_t ms = d.count();
    if (ms != 0 && ms % 3600000 == 0) return std::to_string(ms / 3600000) + " h";
    if (ms != 0 && ms % 60000 == 0) return std::to_string(ms / 60000) + " min";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
    return std::to_string(ms) + " ms";
}

std::string_view to_string(Machine m) { return name_of(kMachines, m); }
std::string_view to_string(KsmMode m) { return name_of(kKsmModes, m); }
std::string_view to_string(ShareScope s) { return s == ShareScope::Off ? "off" : name_of(kShareScopes, s); }
std::string_view to_string(SweepWhen w) { return name_of(kSweepWhens, w); }

ErrorOr<SweepWhen> parse_sweep_when(std::string_view text) {
    if (auto w = value_of(kSweepWhens, text)) return *w;
    return Error{"sweep_when must be pressure or always, got \"" + std::string(text) + "\""};
}

ErrorOr<uint64_t> parse_size(std::string_view text) {
    std::string_view s = trim(text);
    double value = 0;
    std::string unit;
    if (s.empty() || !split_number(s, value, unit))
        return Error{"invalid size \"" + std::string(text) + "\" (expected e.g. 512M, 1G, 1.5GiB)"};
    double mult;
    if (unit.empty() || unit == "b")
        mult = 1;
    else if (unit == "k" || unit == "kb" || unit == "kib")
        mult = 1024.0;
    else if (unit == "m" || unit == "mb" || unit == "mib")
        mult = 1024.0 * 1024;
    else if (unit == "g" || unit == "gb" || unit == "gib")
        mult = 1024.0 * 1024 * 1024;
    else if (unit == "t" || unit == "tb" || unit == "tib")
        mult = 1024.0 * 1024 * 1024 * 1024;
    else
        return Error{"invalid size unit in \"" + std::string(text) + "\" (use K, M, G or T)"};
    double bytes = value * mult;
    if (!std::isfinite(bytes) || bytes >= 18446744073709549568.0)
        return Error{"size \"" + std::string(text) + "\" is too large"};
    if (bytes != std::floor(bytes)) return Error{"size \"" + std::string(text) + "\" is not a whole number of bytes"};
    return static_cast<uint64_t>(bytes);
}

ErrorOr<Millis> parse_duration(std::string_view text) {
    std::string_view s = trim(text);
    double value = 0;
    std::string unit;
    if (s.empty() || !split_number(s, value, unit))
        return Error{"invalid duration \"" + std::string(text) + "\" (expected e.g. 60s, 500ms, 2m)"};
    double ms;
    if (unit.empty() || unit == "s")
        ms = value * 1000;
    else if (unit == "ms")
        ms = value;
    else if (unit == "m" || unit == "min")
        ms = value * 60000;
    else if (unit == "h")
        ms = value * 3600000;
    else
        return Error{"invalid duration unit in \"" + std::string(text) + "\" (use ms, s, m or h)"};
    if (!std::isfinite(ms) || ms > static_cast<double>(kMaxDurationSeconds) * 1000)
        return Error{"duration \"" + std::string(text) + "\" is too long"};
    return Millis(static_cast<int64_t>(ms));
}

ErrorOr<Machine> parse_machine(std::string_view text) {
    if (auto m = value_of(kMachines, text)) return *m;
    return Error{"unknown machine \"" + std::string(text) + "\" (microvm, q35 or pc)"};
}

ErrorOr<KsmMode> parse_ksm_mode(std::string_view text) {
    if (auto m = value_of(kKsmModes, text)) return *m;
    return Error{"unknown KSM mode \"" + std::string(text) + "\" (unchanged, off, blind or targeted)"};
}

// These three were checked by validate(); their messages are unchanged, without the file and key.
ErrorOr<PolicyKind> parse_policy_kind(std::string_view text) {
    if (auto k = value_of(kPolicyKinds, text)) return *k;
    return Error{"unknown policy \"" + std::string(text) + "\" (idle-tax or none)"};
}

ErrorOr<ShareScope> parse_share_scope(std::string_view text) {
    if (auto s = value_of(kShareScopes, text)) return *s;
    return Error{"ksm scope must be across or within, got \"" + std::string(text) + "\""};
}

ErrorOr<StatusDisplay> parse_status_display(std::string_view text) {
    if (auto d = value_of(kStatusDisplays, text)) return *d;
    return Error{"status must be auto, tty, plain or off, got \"" + std::string(text) + "\""};
}

std::string format_size(uint64_t bytes) {
    char buf[48];
    const double mib = static_cast<double>(bytes) / (1024.0 * 1024.0);
    if (bytes >= (1ull << 30))
        snprintf(buf, sizeof buf, "%.2f GiB", mib / 1024.0);
    else if (bytes >= (1ull << 20) || bytes == 0)
        snprintf(buf, sizeof buf, "%.0f MiB", mib);
    else
        snprintf(buf, sizeof buf, "%.0f KiB", static_cast<double>(bytes) / 1024.0);
    return buf;
}

ErrorOr<VmSpec> parse_vm_flag(std::string_view text) {
    // key=value pairs separated by commas; a value may be double-quoted to hold commas and spaces.
    VmSpec vm;
    Reader r("--vm " + std::string(text));
    size_t i = 0;
    bool any = false;
    while (i < text.size()) {
        size_t eq = text.find('=', i);
        size_t comma = text.find(',', i);
        if (eq == std::string_view::npos || (comma != std::string_view::npos && comma < eq))
            return Error{
                "--vm " + std::string(text) + ": expected key=value, got \"" +
                std::string(text.substr(i, comma == std::string_view::npos ? std::string_view::npos : comma - i)) +
                "\""};
        std::string key(trim(text.substr(i, eq - i)));
        i = eq + 1;
        std::string value;
        if (i < text.size() && text[i] == '"') {
            ++i;
            bool closed = false;
            while (i < text.size()) {
                char c = text[i++];
                if (c == '\\' && i < text.size()) {
                    value += text[i++];
                } else if (c == '"') {
                    closed = true;
                    break;
                } else {
                    value += c;
                }
            }
            if (!closed) return Error{"--vm " + std::string(text) + ": unterminated quote in " + key};
            if (i < text.size() && text[i] != ',')
                return Error{"--vm " + std::string(text) + ": expected ',' after the quoted value of " + key};
        } else {
            size_t end = text.find(',', i);
            if (end == std::string_view::npos) end = text.size();
            value = std::string(text.substr(i, end - i));
            i = end;
        }
        if (i < text.size()) ++i;  // the comma
        any = true;
        if (key == "count" || key == "balloon_props")
            return Error{"--vm: \"" + key + "\" is only available in a config file"};
        if (std::find(kVmKeys.begin(), kVmKeys.end(), key) == kVmKeys.end())
            return Error{unknown_key_message("--vm " + std::string(text), key, kVmKeys)};
        json v;
        if (key == "balloon") {
            if (value == "on" || value == "true" || value == "1")
                v = true;
            else if (value == "off" || value == "false" || value == "0")
                v = false;
            else
                return r.fail(key, "expected on or off, got \"" + value + "\"");
        } else if (key == "shares" || key == "vcpus") {
            if (value.empty() || value.size() > 9 ||
                !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
                return r.fail(key, "expected a positive integer, got \"" + value + "\"");
            v = static_cast<uint64_t>(std::stoull(value));
        } else {
            v = value;
        }
        TRY(apply_vm_key(vm, r, key, v));
    }
    if (!any) return Error{"--vm: empty VM description"};
    return vm;
}

ErrorOr<Config> parse_config_json(std::string_view text, std::string_view origin) {
    const std::string where(origin);
    // Error messages dump values, which recurses: no config nests anywhere near this deep.
    if (json_nesting_depth(text, 64) > 64) return Error{where + ": JSON nested deeper than 64 levels"};
    json doc;
    // The one exception hangar catches on purpose: nlohmann's parse error message (with the
    // byte offset) comes only with its exception.
    try {
        doc = json::parse(text.begin(), text.end(), nullptr, true, /*ignore_comments=*/true);
    } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e999
        // nlohmann's message carries the byte offset; keep it, drop its exception-id prefix.
        std::string what = e.what();
        auto pos = what.find("parse error");
        return Error{where + ": not valid JSON: " + (pos == std::string::npos ? what : what.substr(pos))};
    }
    Config cfg;
    Reader r(where);
    TRY(r.check_keys(doc, {"vms",      "defaults", "budget",      "qemu",           "kernel",       "accel", "duration",
                           "interval", "grace",    "qmp_timeout", "stats_interval", "csv",          "plot",  "run_dir",
                           "status",   "policy",   "ksm",         "qemu_user",      "qemu_sandbox", "hosts"}));
    VmSpec defaults;
    if (doc.contains("defaults")) {
        Reader dr(where + ": defaults");
        TRY(dr.check_keys(doc["defaults"], kVmKeys));
        for (auto it = doc["defaults"].begin(); it != doc["defaults"].end(); ++it) {
            if (it.key() == "name" || it.key() == "count") return dr.fail(it.key(), "cannot be a default");
            TRY(apply_vm_key(defaults, dr, it.key(), it.value()));
        }
    }
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        const std::string& k = it.key();
        const json& v = it.value();
        if (k == "vms") {
            if (!v.is_array()) return r.fail(k, "expected a list of VMs");
            for (size_t i = 0; i < v.size(); ++i) {
                Reader vr(where + ": vms[" + std::to_string(i) + "]");
                TRY(vr.check_keys(v[i], kVmKeys));
                VmSpec vm = defaults;
                uint64_t count = 1;
                for (auto f = v[i].begin(); f != v[i].end(); ++f) {
                    if (f.key() == "count")
                        count = TRY(vr.uint(f.value(), "count", 256, 1));
                    else
                        TRY(apply_vm_key(vm, vr, f.key(), f.value()));
                }
                if (count == 0) return vr.fail("count", "must be at least 1");
                if (count > 1 && v[i].contains("domain"))
                    return vr.fail("domain",
                                   "one domain per VM: without \"domain\", the domains of a count are "
                                   "named like the VMs (web1, web2, ...)");
                if (vm.name.empty()) vm.name = "vm" + std::to_string(cfg.vms.size() + 1);
                if (count == 1) {
                    cfg.vms.push_back(vm);
                } else {
                    for (uint64_t n = 1; n <= count; ++n) {
                        VmSpec copy = vm;
                        copy.name = vm.name + std::to_string(n);
                        cfg.vms.push_back(copy);
                    }
                }
            }
        } else if (k == "budget")
            cfg.budget = TRY(r.size(v, k));
        else if (k == "qemu")
            cfg.qemu = TRY(r.str(v, k));
        else if (k == "qemu_user")
            cfg.qemu_user = TRY(r.str(v, k));
        else if (k == "qemu_sandbox")
            cfg.qemu_sandbox = TRY(r.str(v, k));
        else if (k == "kernel")
            cfg.kernel = TRY(r.str(v, k));
        else if (k == "accel")
            cfg.accel = TRY(r.str(v, k));
        else if (k == "duration")
            cfg.duration = TRY(r.duration(v, k));
        else if (k == "interval")
            cfg.interval = TRY(r.duration(v, k));
        else if (k == "grace")
            cfg.grace = TRY(r.duration(v, k));
        else if (k == "qmp_timeout")
            cfg.qmp_timeout = TRY(r.duration(v, k));
        else if (k == "stats_interval")
            cfg.stats_interval_s = static_cast<unsigned>(TRY(r.uint(v, k, 3600)));
        else if (k == "csv")
            cfg.csv = TRY(r.str(v, k));
        else if (k == "plot")
            cfg.plot = TRY(r.str(v, k));
        else if (k == "run_dir")
            cfg.run_dir = TRY(r.str(v, k));
        else if (k == "status") {
            const std::string status = TRY(r.str(v, k));
            cfg.status = TRY(parse_status_display(status));
        } else if (k == "policy")
            TRY(parse_policy(cfg.policy, v, where + ": policy"));
        else if (k == "ksm")
            TRY(parse_ksm(cfg.ksm, v, where + ": ksm"));
        else if (k == "hosts")
            cfg.hosts = TRY(parse_hosts(v, where + ": hosts"));
    }
    return cfg;
}

ErrorOr<Config> load_config_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Error{path + ": cannot open: " + std::strerror(errno)};
    std::ostringstream ss;
    ss << in.rdbuf();
    if (ss.str().size() > (1u << 20)) return Error{path + ": larger than 1 MiB, not a fleet file"};
    return parse_config_json(ss.str(), path);
}

namespace {
// VM and host names: they become file names in the run directory and CSV cells.
bool valid_name(const std::string& name) {
    return !name.empty() && name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_';
    });
}
}  // namespace

ErrorOr<void> validate(const Config& c) {
    if (c.vms.empty()) return Error{"no VMs: give --vm or a config file with \"vms\""};
    if (c.vms.size() > 256) return Error{"too many VMs (" + std::to_string(c.vms.size()) + ", at most 256)"};
    std::set<std::string> names;
    uint64_t total = 0;
    // The policy's floors, summed per host: each host's budget must hold its own VMs' floors.
    std::map<std::string, uint64_t> floors;
    std::set<std::string> host_names;
    for (size_t i = 0; i < c.hosts.size(); ++i) {
        const HostSpec& h = c.hosts[i];
        const std::string where = "hosts[" + std::to_string(i) + "] \"" + h.name + "\"";
        if (!valid_name(h.name)) return Error{where + ": a name is 1-32 letters, digits, '-' or '_'"};
        if (h.name == kLocalHost)
            return Error{where + ": \"" + std::string(kLocalHost) + "\" is the host of the VMs hangar starts itself"};
        if (!host_names.insert(h.name).second) return Error{where + ": duplicate name"};
        if (h.uri.find("://") == std::string::npos || h.uri.find_first_of(" \t\n\"'") != std::string::npos)
            return Error{where + ": \"" + h.uri +
                         "\" is not a libvirt URI (e.g. qemu:///system, qemu+ssh://user@host/system)"};
        if (h.budget) TRY(check_size(where + ": budget", *h.budget, 1, kMaxBudget));
        floors[h.name] = 0;
    }
    for (const auto& vm : c.vms) {
        const std::string where = "VM \"" + vm.name + "\"";
        if (!valid_name(vm.name)) return Error{where + ": a name is 1-32 letters, digits, '-' or '_'"};
        if (!vm.host.empty() && !host_names.count(vm.host)) {
            std::string known;
            for (const auto& h : c.hosts) known += (known.empty() ? "" : ", ") + h.name;
            return Error{where + ": host \"" + vm.host + "\" is not in \"hosts\"" +
                         (known.empty() ? " (the fleet file has none)" : " (known: " + known + ")")};
        }
        if (vm.host.empty() && !vm.domain.empty())
            return Error{where + ": \"domain\" names a libvirt domain: give the VM a \"host\" too"};
        if (vm.domain.size() > 256 || vm.domain.find_first_of("\n\"") != std::string::npos)
            return Error{where + ": invalid domain name \"" + vm.domain + "\""};
        if (!names.insert(vm.name).second) return Error{where + ": duplicate name"};
        if (vm.app.empty() || std::any_of(vm.app.begin(), vm.app.end(), [](char ch) {
                return std::isspace(static_cast<unsigned char>(ch)) || ch == '=' || ch == '"';
            }))
            return Error{where + ": invalid app name \"" + vm.app + "\""};
        for (const auto& a : vm.args)
            if (a.find_first_of("\"\n") != std::string::npos)
                return Error{where + ": app argument \"" + a + "\" may not contain quotes or newlines"};
        if (vm.memory < (16ull << 20))
            return Error{where + ": memory " + format_size(vm.memory) + " is below 16 MiB (allowed: 16 MiB to 1 TiB)"};
        if (vm.memory > (1ull << 40))
            return Error{where + ": memory " + format_size(vm.memory) + " is above 1 TiB (allowed: 16 MiB to 1 TiB)"};
        if (vm.memory % (1ull << 20)) return Error{where + ": memory must be a whole number of MiB"};
        if (vm.min_memory > vm.memory)
            return Error{where + ": min_memory " + format_size(vm.min_memory) + " is above its memory " +
                         format_size(vm.memory)};
        if (vm.shares == 0) return Error{where + ": shares must be positive"};
        TRY(check_uint(where + ": shares", vm.shares, 1, 1000000));
        for (const auto& [k, v] : vm.balloon_props)
            if (k.empty() || k.find_first_of(",= ") != std::string::npos || v.find(',') != std::string::npos)
                return Error{where + ": invalid balloon property \"" + k + "=" + v + "\""};
        total += vm.memory;
        floors[vm.host.empty() ? std::string(kLocalHost) : vm.host] += std::max(vm.min_memory, c.policy.floor);
    }
    if (c.budget) {
        if (*c.budget == 0) return Error{"budget must be positive"};
        if (floors[std::string(kLocalHost)] > *c.budget)
            return Error{"budget " + format_size(*c.budget) + " is below the VMs' floors (" +
                         format_size(floors[std::string(kLocalHost)]) + ")"};
    }
    for (const auto& h : c.hosts)
        if (h.budget && floors[h.name] > *h.budget)
            return Error{"host \"" + h.name + "\": budget " + format_size(*h.budget) + " is below its VMs' floors (" +
                         format_size(floors[h.name]) + ")"};
    // Every number has a range, whether it came from a file or a flag (a flag skips the reader).
    using std::chrono::hours;
    using std::chrono::minutes;
    if (c.duration) TRY(check_duration("duration (--duration)", *c.duration, Millis(1), hours(24 * 365)));
    TRY(check_duration("interval (--interval)", c.interval, Millis(100), hours(1)));
    TRY(check_duration("grace (--grace)", c.grace, Millis(0), hours(1)));
    TRY(check_duration("qmp_timeout", c.qmp_timeout, Millis(100), minutes(10)));
    TRY(check_uint("stats_interval", c.stats_interval_s, 0, 3600));
    if (c.budget) TRY(check_size("budget (--budget)", *c.budget, 1, kMaxBudget));
    TRY(check_size("policy.floor", c.policy.floor, 0, 1ull << 40));
    TRY(check_size("policy.hysteresis", c.policy.hysteresis, 0, 1ull << 40));
    TRY(check_size("policy.max_step", c.policy.max_step, 1, 1ull << 40));
    TRY(check_uint("policy.reclaim_hold", c.policy.reclaim_hold, 0, 100000));
    TRY(check_duration("policy.idle_after (--idle-after)", c.policy.idle_after, Millis(1000), hours(24)));
    TRY(check_duration("policy.sweep (--sweep)", c.policy.sweep, Millis(100), hours(24), /*zero_ok=*/true));
    TRY(check_size("policy.host_reserve (--host-reserve)", c.policy.host_reserve, 0, 1ull << 40));
    if (c.ksm.pages_to_scan)
        TRY(check_uint("ksm.pages_to_scan (--ksm-pages-to-scan)", *c.ksm.pages_to_scan, 1, kMaxKsmKnob));
    if (c.ksm.sleep_millisecs)
        TRY(check_uint("ksm.sleep_millisecs (--ksm-sleep-ms)", *c.ksm.sleep_millisecs, 0, kMaxKsmKnob));
    if (c.ksm.merge_across_nodes) TRY(check_uint("ksm.merge_across_nodes", *c.ksm.merge_across_nodes, 0, 1));
    if (c.ksm.use_zero_pages) TRY(check_uint("ksm.use_zero_pages", *c.ksm.use_zero_pages, 0, 1));
    TRY(check_duration("ksm.hint_refresh", c.ksm.hint_refresh, Millis(100), hours(24)));
    TRY(check_duration("ksm.lock_wait (--ksm-lock-wait)", c.ksm.lock_wait, Millis(0), hours(24)));
    if (c.qemu_user.empty() || c.qemu_user.size() > 32 ||
        !std::all_of(c.qemu_user.begin(), c.qemu_user.end(), [](char ch) {
            return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
        }))
        return Error{"qemu_user must be auto, none or a user name, got \"" + c.qemu_user + "\""};
    if (c.qemu_sandbox != "auto" && c.qemu_sandbox != "on" && c.qemu_sandbox != "off")
        return Error{"qemu_sandbox must be auto, on or off, got \"" + c.qemu_sandbox + "\""};
    if (c.accel != "tcg" && c.accel != "kvm") return Error{"accel must be tcg or kvm, got \"" + c.accel + "\""};
    if (!(c.policy.tax_rate >= 0.0 && c.policy.tax_rate < 1.0))
        return Error{"policy.tax_rate (--tax-rate): " + std::to_string(c.policy.tax_rate) +
                     " is out of range (allowed: 0 to 1, 1 excluded)"};
    if (!(c.policy.pressure_grow > 0.0 && c.policy.pressure_grow <= 1.0))
        return Error{"policy.pressure_grow: " + std::to_string(c.policy.pressure_grow) +
                     " is out of range (allowed: above 0, up to 1)"};
    if (c.ksm.lock.empty()) return Error{"ksm lock must be auto, none or a path, not empty"};
    if (c.ksm.mode == KsmMode::Targeted && c.qemu == "stock")
        return Error{"--ksm targeted needs the patched QEMU (share-hints); stock QEMU cannot target KSM"};
    (void)total;
    return {};
}

}  // namespace hangar
