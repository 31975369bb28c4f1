#include "sharing_qmp.h"

namespace hangar {

ErrorOr<HintsPage> parse_hints_page(const nlohmann::json& ret) {
    if (!ret.is_object() || !ret.contains("total") || !ret["total"].is_number_unsigned() || !ret.contains("hints") ||
        !ret["hints"].is_array()) {
        return Error{"x-blimp-balloon-query-hints: reply lacks total/hints"};
    }
    HintsPage page;
    page.total = ret["total"].get<uint64_t>();
    for (const auto& h : ret["hints"]) {
        if (!h.is_object() || !h.contains("pfn") || !h["pfn"].is_number_unsigned() || !h.contains("npages") ||
            !h["npages"].is_number_unsigned() || !h.contains("hash") || !h["hash"].is_string()) {
            return Error{"x-blimp-balloon-query-hints: malformed hint " + h.dump()};
        }
        auto hash = SharingIndex::parse_hash(h["hash"].get<std::string>());
        if (!hash) {
            return Error{"x-blimp-balloon-query-hints: bad hash " + h["hash"].dump()};
        }
        Hint hint;
        hint.run = {h["pfn"].get<uint64_t>(), h["npages"].get<uint64_t>()};
        hint.hash = *hash;
        hint.zero = h.contains("zero") && h["zero"].is_boolean() && h["zero"].get<bool>();
        page.hints.push_back(hint);
    }
    return page;
}

nlohmann::json query_hints_args(uint64_t start) { return {{"start", start}, {"max", kHintPageMax}}; }

nlohmann::json hint_filter_args(const std::optional<std::set<uint64_t>>& hashes) {
    if (!hashes) return nlohmann::json::object();
    nlohmann::json list = nlohmann::json::array();
    for (uint64_t h : *hashes) list.push_back(SharingIndex::hash_hex(h));
    return {{"hashes", list}};
}

}  // namespace hangar
