#include "host_rounds.h"

#include <algorithm>

namespace hangar {

std::vector<HostRound> host_rounds(const std::vector<HostSpec>& hosts, std::optional<uint64_t> local_budget,
                                   const std::vector<HostMember>& members) {
    std::vector<HostRound> rounds;
    rounds.push_back({std::string(kLocalHost), local_budget, {}});
    for (const auto& h : hosts) rounds.push_back({h.name, h.budget, {}});
    for (size_t i = 0; i < members.size(); ++i) {
        const HostMember& m = members[i];
        auto round = std::find_if(rounds.begin(), rounds.end(), [&](const HostRound& r) { return r.host == m.host; });
        if (round == rounds.end() || !m.alive) continue;
        if (m.movable)
            round->members.push_back(i);
        else if (round->budget)
            *round->budget -= std::min(*round->budget, m.memory);
    }
    std::erase_if(rounds, [](const HostRound& r) { return r.members.empty(); });
    return rounds;
}

}  // namespace hangar
