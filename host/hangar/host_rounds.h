// The balloon policy per host: a fleet across hosts is one policy round per host, over that
// host's VMs and under that host's budget (memory on one machine cannot pay for another's).
// Pure: unit-tested (tests/unit/hangar/host_rounds_test.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.h"

namespace hangar {

// One VM as the split sees it.
struct HostMember {
    std::string host;      // kLocalHost for the VMs hangar spawns
    uint64_t memory = 0;   // what it holds at most (its configured or domain size)
    bool alive = false;    // still holding memory (started, not yet gone)
    bool movable = false;  // the policy may set its balloon (alive, ballooned, running, not stopping)
};

struct HostRound {
    std::string host;
    // The host's budget less the memory of its VMs the policy cannot move (a VM that is paused,
    // starting, or has no balloon holds its memory all the same). None: no budget on this host.
    std::optional<uint64_t> budget;
    std::vector<size_t> members;  // indexes into the members given, the movable ones, in order
};

// One round per host that has a movable VM, in the order of `hosts` (local first).
// `local_budget` is the fleet's budget, for the VMs hangar spawns.
std::vector<HostRound> host_rounds(const std::vector<HostSpec>& hosts, std::optional<uint64_t> local_budget,
                                   const std::vector<HostMember>& members);

}  // namespace hangar
