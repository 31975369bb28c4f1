#include "sharing_index.h"

#include <algorithm>
#include <cstdio>

namespace hangar {

void SharingIndex::add(const std::string& vm, const Hint& h) {
    if (h.run.npages == 0) return;
    remove_overlapping(vm, h.run);
    by_vm_[vm][h.run.pfn] = h;
    by_hash_[h.hash].pages_by_vm[vm] += h.run.npages;
}

void SharingIndex::remove_overlapping(const std::string& vm, PageRun run) {
    auto vit = by_vm_.find(vm);
    if (vit == by_vm_.end() || run.npages == 0) return;
    auto& hints = vit->second;
    const uint64_t end = run.pfn + run.npages;
    // The first candidate may start before `run` and reach into it.
    auto it = hints.upper_bound(run.pfn);
    if (it != hints.begin()) --it;
    while (it != hints.end() && it->first < end) {
        const Hint& h = it->second;
        if (h.run.pfn + h.run.npages <= run.pfn) {
            ++it;
            continue;
        }
        auto& info = by_hash_[h.hash];
        auto& count = info.pages_by_vm[vm];
        count -= std::min(count, h.run.npages);
        if (count == 0) info.pages_by_vm.erase(vm);
        if (info.pages_by_vm.empty()) by_hash_.erase(h.hash);
        it = hints.erase(it);
    }
}

void SharingIndex::replace(const std::string& vm, const std::vector<Hint>& hints) {
    forget(vm);
    ingest(vm, hints);
}

void SharingIndex::ingest(const std::string& vm, const std::vector<Hint>& hints) {
    by_vm_[vm];  // a VM with no hints is still a VM the index knows
    for (const auto& h : hints) add(vm, h);
}

void SharingIndex::unseal(const std::string& vm, PageRun run) { remove_overlapping(vm, run); }

void SharingIndex::forget(const std::string& vm) {
    auto it = by_vm_.find(vm);
    if (it == by_vm_.end()) return;
    for (const auto& [pfn, h] : it->second) {
        (void)pfn;
        auto hi = by_hash_.find(h.hash);
        if (hi == by_hash_.end()) continue;
        hi->second.pages_by_vm.erase(vm);
        if (hi->second.pages_by_vm.empty()) by_hash_.erase(hi);
    }
    by_vm_.erase(it);
}

std::set<uint64_t> SharingIndex::twins(const std::string& vm, ShareScope scope) const {
    std::set<uint64_t> out;
    if (scope == ShareScope::Off) return out;
    auto vit = by_vm_.find(vm);
    if (vit == by_vm_.end()) return out;
    for (const auto& [pfn, h] : vit->second) {
        (void)pfn;
        const auto& info = by_hash_.at(h.hash);
        const uint64_t mine = info.pages_by_vm.at(vm);
        bool shareable = scope == ShareScope::AcrossVms ? info.pages_by_vm.size() >= 2 || mine >= 2 : mine >= 2;
        if (shareable) out.insert(h.hash);
    }
    return out;
}

std::vector<PageRun> SharingIndex::runs_to_mark(const std::string& vm, ShareScope scope, uint64_t merge_gap) const {
    std::vector<PageRun> out;
    auto wanted = twins(vm, scope);
    if (wanted.empty()) return out;
    for (const auto& [pfn, h] : by_vm_.at(vm)) {  // ordered by pfn
        if (!wanted.count(h.hash)) continue;
        if (!out.empty() && out.back().pfn + out.back().npages + merge_gap >= pfn) {
            const uint64_t end = std::max(out.back().pfn + out.back().npages, pfn + h.run.npages);
            out.back().npages = end - out.back().pfn;
        } else {
            out.push_back(h.run);
        }
    }
    return out;
}

size_t SharingIndex::hint_count(const std::string& vm) const {
    auto it = by_vm_.find(vm);
    return it == by_vm_.end() ? 0 : it->second.size();
}

uint64_t SharingIndex::hinted_pages(const std::string& vm) const {
    uint64_t n = 0;
    auto it = by_vm_.find(vm);
    if (it != by_vm_.end())
        for (const auto& [pfn, h] : it->second) n += h.run.npages, (void)pfn;
    return n;
}

uint64_t SharingIndex::potential_savings(ShareScope scope) const {
    uint64_t saved = 0;
    for (const auto& [hash, info] : by_hash_) {
        (void)hash;
        if (scope == ShareScope::Off) break;
        if (scope == ShareScope::AcrossVms) {
            uint64_t pages = 0;
            for (const auto& [vm, n] : info.pages_by_vm) pages += n, (void)vm;
            saved += pages - 1;
        } else {
            for (const auto& [vm, n] : info.pages_by_vm) saved += n - 1, (void)vm;
        }
    }
    return saved;
}

std::string SharingIndex::hash_hex(uint64_t hash) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash));
    return buf;
}

std::optional<uint64_t> SharingIndex::parse_hash(const std::string& hex) {
    if (hex.size() != 16) return std::nullopt;
    uint64_t v = 0;
    for (char c : hex) {
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= static_cast<uint64_t>(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= static_cast<uint64_t>(c - 'a' + 10);
        else
            return std::nullopt;
    }
    return v;
}

}  // namespace hangar
