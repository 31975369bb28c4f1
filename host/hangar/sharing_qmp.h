// The patched QEMU's sharing-hint commands (docs/spec-virtio-balloon-blimp.md, section 7) as
// data: parsing x-blimp-balloon-query-hints pages and building x-blimp-balloon-hint-filter
// arguments. Kept apart from the fleet so the wire format is unit-tested on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "error_or.h"
#include "sharing_index.h"

namespace hangar {

inline constexpr uint64_t kHintPageMax = 65536;  // the command's cap per call

struct HintsPage {
    uint64_t total = 0;
    std::vector<Hint> hints;
};

// One reply of x-blimp-balloon-query-hints; an error when malformed.
ErrorOr<HintsPage> parse_hints_page(const nlohmann::json& ret);
nlohmann::json query_hints_args(uint64_t start);
// {"hashes": [...]} for a filter, {} to clear it (mark every hint).
nlohmann::json hint_filter_args(const std::optional<std::set<uint64_t>>& hashes);

}  // namespace hangar
