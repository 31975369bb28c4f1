// SharingIndex: the cross-VM view of guests' page hashes.
//
// Guests hint (pfn run, XXH3-64 hash) for stable pages (docs/spec-virtio-balloon-blimp.md,
// section 5.4); the patched QEMU records them and lists them over QMP
// (x-blimp-balloon-query-hints). A hash is worth scanning only if some *other* VM holds a page
// with the same hash (or, with within-VM sharing, the same VM holds it twice). The index answers
// that, and produces per VM both the hash filter QEMU takes (x-blimp-balloon-hint-filter) and the
// runs it would mark. Hashes are advice: KSM compares contents before it merges anything.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.h"  // ShareScope

namespace hangar {

struct PageRun {
    uint64_t pfn = 0;
    uint64_t npages = 0;
    bool operator==(const PageRun&) const = default;
};

struct Hint {
    PageRun run;
    uint64_t hash = 0;
    bool zero = false;
};

class SharingIndex {
public:
    // Replaces everything known about `vm` (QEMU lists all current hints at once).
    void replace(const std::string& vm, const std::vector<Hint>& hints);
    // Adds hints; a hint over pages already hinted replaces the old hint there.
    void ingest(const std::string& vm, const std::vector<Hint>& hints);
    // Drops hints overlapping [pfn, pfn + npages) (the guest unsealed them).
    void unseal(const std::string& vm, PageRun run);
    void forget(const std::string& vm);

    // Hashes that can share under `scope`: across VMs = held by at least two VMs; within a VM =
    // at least two pages of that VM (a run of n > 1 identical pages counts).
    std::set<uint64_t> twins(const std::string& vm, ShareScope scope) const;
    // The runs of `vm` to mark mergeable, adjacent and overlapping runs merged, and runs closer
    // than `merge_gap` pages bridged (each disjoint run costs QEMU a VMA).
    std::vector<PageRun> runs_to_mark(const std::string& vm, ShareScope scope, uint64_t merge_gap = 0) const;

    size_t vm_count() const { return by_vm_.size(); }
    size_t hint_count(const std::string& vm) const;
    uint64_t hinted_pages(const std::string& vm) const;
    // Pages KSM could save at best if every twin merged: per hash, all pages but one.
    uint64_t potential_savings(ShareScope scope) const;

    static std::string hash_hex(uint64_t hash);  // 16 lower-case hex digits
    static std::optional<uint64_t> parse_hash(const std::string& hex);

private:
    struct HashInfo {
        std::map<std::string, uint64_t> pages_by_vm;  // pages per VM holding this hash
    };
    void add(const std::string& vm, const Hint& h);
    void remove_overlapping(const std::string& vm, PageRun run);

    std::map<std::string, std::map<uint64_t, Hint>> by_vm_;  // vm -> start pfn -> hint
    std::unordered_map<uint64_t, HashInfo> by_hash_;
};

}  // namespace hangar
